// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IUptoEscrow} from "../../src/interfaces/IUptoEscrow.sol";
import {MockUSDC} from "../../src/mocks/MockUSDC.sol";
import {UptoEscrow} from "../../src/UptoEscrow.sol";
import {Test} from "../utils/Test.sol";
import {vm} from "../utils/Vm.sol";
import {EscrowHandler} from "./EscrowHandler.sol";

/// @notice Stateful properties of the escrow under random interleavings of deposits (both collectors), claims (both
///         paths, valid and invalid), replays, settlements, refunds (both paths), withdrawals and time.
contract UptoEscrowInvariantTest is Test {
    EscrowHandler internal handler;
    UptoEscrow internal escrow;
    MockUSDC internal usdc;

    function setUp() public {
        vm.warp(1_700_000_000);
        handler = new EscrowHandler();
        escrow = handler.escrow();
        usdc = handler.usdc();

        bytes4[] memory selectors = new bytes4[](9);
        selectors[0] = EscrowHandler.deposit.selector;
        selectors[1] = EscrowHandler.claim.selector;
        selectors[2] = EscrowHandler.replayClaim.selector;
        selectors[3] = EscrowHandler.settle.selector;
        selectors[4] = EscrowHandler.refund.selector;
        selectors[5] = EscrowHandler.initiateWithdraw.selector;
        selectors[6] = EscrowHandler.finalizeWithdraw.selector;
        selectors[7] = EscrowHandler.warp.selector;
        // Deposits twice as likely as the rest, so channels have funds to move.
        selectors[8] = EscrowHandler.deposit.selector;
        targetContract(address(handler));
        targetSelector(FuzzSelector({addr: address(handler), selectors: selectors}));
    }

    /// @notice Every handler-side expectation held (exact refund, settle and withdrawal amounts, replays inert,
    ///         claims accepted or rejected as modelled, no unexpected revert).
    function invariant_handlerModelHolds() public view {
        assertEq(handler.violation(), "", "handler model violated");
    }

    /// @notice The escrow holds exactly what it owes:
    ///             token.balanceOf(escrow) == Σ_channels balance − Σ_receivers totalSettled
    ///                                     == Σ_channels (balance − totalClaimed) + Σ_receivers (totalClaimed − totalSettled)
    ///         (unclaimed escrow plus claimed-but-unsettled funds), and `balance` is deposits − refunds − withdrawals.
    function invariant_escrowBalanceMatchesAccounting() public view {
        uint256 sumBalance;
        uint256 sumClaimed;
        uint256 sumNet;
        for (uint256 c; c < handler.channelCount(); ++c) {
            (uint128 balance, uint128 claimed) = escrow.channels(handler.channelIds(c));
            sumBalance += balance;
            sumClaimed += claimed;
            sumNet += handler.ghostDeposited(c) - handler.ghostRefunded(c) - handler.ghostWithdrawn(c);
            assertEq(balance, handler.ghostDeposited(c) - handler.ghostRefunded(c) - handler.ghostWithdrawn(c));
        }
        uint256 sumReceiverClaimed;
        uint256 sumSettled;
        for (uint256 r; r < handler.receiverCount(); ++r) {
            (uint128 claimed, uint128 settled) = escrow.receivers(handler.receivers(r), address(usdc));
            sumReceiverClaimed += claimed;
            sumSettled += settled;
            assertEq(settled, handler.ghostSettled(r), "receiver settled total matches payouts");
            assertEq(usdc.balanceOf(handler.receivers(r)), settled, "receivers only get settled funds");
        }
        assertEq(sumNet, sumBalance);
        assertEq(sumReceiverClaimed, sumClaimed, "each claim is credited to its receiver exactly once");
        assertEq(usdc.balanceOf(address(escrow)), sumBalance - sumSettled, "escrow token balance");
        assertEq(
            usdc.balanceOf(address(escrow)),
            (sumBalance - sumClaimed) + (sumReceiverClaimed - sumSettled),
            "unclaimed + claimed-unsettled"
        );
    }

    /// @notice `totalClaimed` never decreases, never exceeds the channel balance, and never exceeds the highest
    ///         ceiling a voucher for the channel carried; receivers are never settled more than was claimed.
    function invariant_claimsBounded() public view {
        for (uint256 c; c < handler.channelCount(); ++c) {
            (uint128 balance, uint128 claimed) = escrow.channels(handler.channelIds(c));
            assertLe(claimed, balance, "totalClaimed <= balance");
            assertLe(claimed, handler.ghostMaxCeiling(c), "totalClaimed <= highest signed ceiling");
            assertGe(claimed, handler.ghostLastClaimed(c), "totalClaimed never decreases");
        }
        for (uint256 r; r < handler.receiverCount(); ++r) {
            (uint128 claimed, uint128 settled) = escrow.receivers(handler.receivers(r), address(usdc));
            assertLe(settled, claimed, "totalSettled <= totalClaimed");
        }
    }

    /// @notice From any reachable state, each payer can get back exactly `balance − totalClaimed` on its own: finish
    ///         (or wait out) a pending withdrawal, withdraw the rest, and wait the delay. Checked on a snapshot.
    function invariant_payerCanRecoverUnclaimed() public {
        uint256 snapshot = vm.snapshotState();
        for (uint256 c; c < handler.channelCount(); ++c) {
            IUptoEscrow.ChannelConfig memory config = handler.channelConfig(c);
            bytes32 channelId = handler.channelIds(c);
            (uint128 balance, uint128 claimed) = escrow.channels(channelId);
            uint256 owed = balance - claimed;
            uint256 before = usdc.balanceOf(config.payer);

            (uint128 pending,) = escrow.pendingWithdrawals(channelId);
            if (pending != 0) {
                vm.warp(block.timestamp + config.withdrawDelay);
                vm.prank(config.payer);
                escrow.finalizeWithdraw(config);
            }
            (balance, claimed) = escrow.channels(channelId);
            if (balance > claimed) {
                vm.prank(config.payer);
                escrow.initiateWithdraw(config, balance - claimed);
                vm.warp(block.timestamp + config.withdrawDelay);
                vm.prank(config.payer);
                escrow.finalizeWithdraw(config);
            }
            assertEq(usdc.balanceOf(config.payer) - before, owed, "payer recovers every unclaimed unit");
            (balance, claimed) = escrow.channels(channelId);
            assertEq(balance, claimed, "only claimed funds remain");
        }
        vm.revertToState(snapshot);
    }
}
