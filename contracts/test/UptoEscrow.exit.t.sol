// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IUptoEscrow} from "../src/interfaces/IUptoEscrow.sol";
import {MockERC1271Wallet} from "../src/mocks/MockERC1271Wallet.sol";
import {EscrowFixture} from "./utils/EscrowFixture.sol";
import {vm} from "./utils/Vm.sol";

/// @notice How funds go back to the payer: cooperative refunds and timed withdrawals.
contract UptoEscrowExitTest is EscrowFixture {
    IUptoEscrow.ChannelConfig internal config;
    bytes32 internal channelId;
    uint256 internal payerStart;

    function setUp() public override {
        super.setUp();
        config = _config();
        channelId = _deposit(config, DEPOSIT);
        payerStart = usdc.balanceOf(payer);
    }

    /*//////////////////////////////////////////////////////////////
                             TIMED WITHDRAWAL
    //////////////////////////////////////////////////////////////*/

    function test_InitiateWithdraw_RecordsRequest() public {
        vm.expectEmit(true, true, true, true, address(escrow));
        emit IUptoEscrow.WithdrawInitiated(channelId, 400e6, uint40(block.timestamp) + DELAY);
        vm.prank(payer);
        escrow.initiateWithdraw(config, 400e6);
        (uint128 amount, uint40 initiatedAt) = escrow.pendingWithdrawals(channelId);
        assertEq(amount, 400e6);
        assertEq(initiatedAt, block.timestamp);
    }

    function test_InitiateWithdraw_AsPayerAuthorizer() public {
        vm.prank(payerAuth);
        escrow.initiateWithdraw(config, 1);
        (uint128 amount,) = escrow.pendingWithdrawals(channelId);
        assertEq(amount, 1);
    }

    function test_RevertWhen_InitiateWithdrawByStranger() public {
        vm.prank(receiverAuth);
        vm.expectRevert(IUptoEscrow.InvalidChannel.selector);
        escrow.initiateWithdraw(config, 1);
    }

    function test_RevertWhen_InitiateWithdrawZero() public {
        vm.prank(payer);
        vm.expectRevert(IUptoEscrow.NothingToWithdraw.selector);
        escrow.initiateWithdraw(config, 0);
    }

    function test_RevertWhen_InitiateWithdrawTwice() public {
        vm.startPrank(payer);
        escrow.initiateWithdraw(config, 1);
        vm.expectRevert(IUptoEscrow.WithdrawalAlreadyPending.selector);
        escrow.initiateWithdraw(config, 1);
        vm.stopPrank();
    }

    function test_RevertWhen_InitiateWithdrawAboveUnclaimed() public {
        _claim(300e6);
        vm.prank(payer);
        vm.expectRevert(IUptoEscrow.WithdrawAmountExceedsAvailable.selector);
        escrow.initiateWithdraw(config, DEPOSIT - 300e6 + 1);
    }

    function test_RevertWhen_InitiateWithdrawOnUnfundedChannel() public {
        IUptoEscrow.ChannelConfig memory empty = _config(bytes32(uint256(77)));
        vm.prank(payer);
        vm.expectRevert(IUptoEscrow.WithdrawAmountExceedsAvailable.selector);
        escrow.initiateWithdraw(empty, 1);
    }

    function test_FinalizeWithdraw_PaysPayerAfterDelay() public {
        vm.prank(payer);
        escrow.initiateWithdraw(config, 400e6);
        vm.warp(block.timestamp + DELAY);

        vm.expectEmit(true, true, true, true, address(escrow));
        emit IUptoEscrow.WithdrawFinalized(channelId, payer, 400e6);
        vm.prank(payer);
        escrow.finalizeWithdraw(config);

        assertEq(usdc.balanceOf(payer), payerStart + 400e6);
        assertEq(_balance(channelId), DEPOSIT - 400e6);
        (uint128 amount, uint40 initiatedAt) = escrow.pendingWithdrawals(channelId);
        assertEq(amount, 0);
        assertEq(initiatedAt, 0);
    }

    function test_FinalizeWithdraw_ByPayerAuthorizerPaysPayer() public {
        vm.prank(payerAuth);
        escrow.initiateWithdraw(config, 10e6);
        vm.warp(block.timestamp + DELAY);
        vm.prank(payerAuth);
        escrow.finalizeWithdraw(config);
        assertEq(usdc.balanceOf(payer), payerStart + 10e6);
        assertEq(usdc.balanceOf(payerAuth), 0);
    }

    /// @dev Claims recorded during the delay come first; the withdrawal gets what is left.
    function test_FinalizeWithdraw_CappedByClaimsDuringDelay() public {
        vm.prank(payer);
        escrow.initiateWithdraw(config, DEPOSIT);
        _claim(700e6);
        vm.warp(block.timestamp + DELAY);
        vm.prank(payer);
        escrow.finalizeWithdraw(config);
        assertEq(usdc.balanceOf(payer), payerStart + 300e6);
        (uint128 balance, uint128 claimed) = escrow.channels(channelId);
        assertEq(balance, 700e6);
        assertEq(claimed, 700e6);
    }

    function test_FinalizeWithdraw_ZeroAfterFullClaim() public {
        vm.prank(payer);
        escrow.initiateWithdraw(config, 100e6);
        _claim(DEPOSIT);
        vm.warp(block.timestamp + DELAY);
        vm.expectEmit(true, true, true, true, address(escrow));
        emit IUptoEscrow.WithdrawFinalized(channelId, payer, 0);
        vm.prank(payer);
        escrow.finalizeWithdraw(config);
        assertEq(usdc.balanceOf(payer), payerStart);
    }

    function test_FinalizeWithdraw_FullWithdrawalClosesChannel() public {
        vm.prank(payer);
        escrow.initiateWithdraw(config, DEPOSIT);
        vm.warp(block.timestamp + DELAY);
        vm.expectEmit(true, true, true, true, address(escrow));
        emit IUptoEscrow.ChannelClosed(channelId, config);
        vm.prank(payer);
        escrow.finalizeWithdraw(config);
        assertEq(_balance(channelId), 0);
        assertEq(usdc.balanceOf(address(escrow)), 0);
    }

    function test_RevertWhen_FinalizeWithdrawByStranger() public {
        vm.prank(payer);
        escrow.initiateWithdraw(config, 1);
        vm.warp(block.timestamp + DELAY);
        vm.prank(receiver);
        vm.expectRevert(IUptoEscrow.NotAuthorizedToFinalizeWithdraw.selector);
        escrow.finalizeWithdraw(config);
    }

    function test_RevertWhen_FinalizeWithdrawNotPending() public {
        vm.prank(payer);
        vm.expectRevert(IUptoEscrow.WithdrawalNotPending.selector);
        escrow.finalizeWithdraw(config);
    }

    function test_RevertWhen_FinalizeWithdrawBeforeDelay() public {
        vm.prank(payer);
        escrow.initiateWithdraw(config, 1);
        vm.warp(block.timestamp + DELAY - 1);
        vm.prank(payer);
        vm.expectRevert(IUptoEscrow.WithdrawDelayNotElapsed.selector);
        escrow.finalizeWithdraw(config);
    }

    function test_RevertWhen_FinalizeWithdrawTwice() public {
        vm.prank(payer);
        escrow.initiateWithdraw(config, 1);
        vm.warp(block.timestamp + DELAY);
        vm.startPrank(payer);
        escrow.finalizeWithdraw(config);
        vm.expectRevert(IUptoEscrow.WithdrawalNotPending.selector);
        escrow.finalizeWithdraw(config);
        vm.stopPrank();
    }

    /*//////////////////////////////////////////////////////////////
                                  REFUND
    //////////////////////////////////////////////////////////////*/

    function test_Refund_ByReceiverAuthorizer() public {
        vm.expectEmit(true, true, true, true, address(escrow));
        emit IUptoEscrow.Refunded(channelId, receiverAuth, 250e6);
        vm.prank(receiverAuth);
        escrow.refund(config, 250e6);
        assertEq(usdc.balanceOf(payer), payerStart + 250e6);
        assertEq(_balance(channelId), DEPOSIT - 250e6);
        assertEq(escrow.refundNonce(channelId), 1);
    }

    function test_Refund_ByReceiver() public {
        vm.prank(receiver);
        escrow.refund(config, 1e6);
        assertEq(usdc.balanceOf(payer), payerStart + 1e6);
    }

    function test_Refund_CappedToUnclaimed() public {
        _claim(900e6);
        vm.prank(receiverAuth);
        escrow.refund(config, DEPOSIT);
        assertEq(usdc.balanceOf(payer), payerStart + 100e6);
        (uint128 balance, uint128 claimed) = escrow.channels(channelId);
        assertEq(balance, 900e6);
        assertEq(claimed, 900e6);
    }

    /// @dev Nothing to return still uses up the nonce (so presigned refunds for it die), with no event.
    function test_Refund_NoopStillBumpsNonce() public {
        _claim(DEPOSIT);
        vm.recordLogs();
        vm.prank(receiverAuth);
        escrow.refund(config, 1);
        assertEq(_escrowEvents(IUptoEscrow.Refunded.selector), 0);
        assertEq(escrow.refundNonce(channelId), 1);
        assertEq(usdc.balanceOf(payer), payerStart);
    }

    function test_Refund_FullRefundClosesChannel() public {
        vm.expectEmit(true, true, true, true, address(escrow));
        emit IUptoEscrow.ChannelClosed(channelId, config);
        vm.prank(receiverAuth);
        escrow.refund(config, DEPOSIT);
        assertEq(_balance(channelId), 0);
    }

    function test_Refund_PartialShrinksPendingWithdrawal() public {
        vm.prank(payer);
        escrow.initiateWithdraw(config, 500e6);
        vm.prank(receiverAuth);
        escrow.refund(config, 200e6);
        (uint128 amount, uint40 initiatedAt) = escrow.pendingWithdrawals(channelId);
        assertEq(amount, 300e6);
        assertEq(initiatedAt, block.timestamp, "the delay keeps running");
    }

    function test_Refund_CoveringPendingWithdrawalCancelsIt() public {
        vm.prank(payer);
        escrow.initiateWithdraw(config, 200e6);
        vm.prank(receiverAuth);
        escrow.refund(config, 200e6);
        (uint128 amount, uint40 initiatedAt) = escrow.pendingWithdrawals(channelId);
        assertEq(amount, 0);
        assertEq(initiatedAt, 0);
        vm.warp(block.timestamp + DELAY);
        vm.prank(payer);
        vm.expectRevert(IUptoEscrow.WithdrawalNotPending.selector);
        escrow.finalizeWithdraw(config);
    }

    /// @dev A receiver cannot grief a withdrawal with tiny refunds: the request shrinks but still finalizes.
    function test_Refund_TinyRefundDoesNotBlockFinalize() public {
        vm.prank(payer);
        escrow.initiateWithdraw(config, 500e6);
        vm.prank(receiverAuth);
        escrow.refund(config, 1);
        vm.warp(block.timestamp + DELAY);
        vm.prank(payer);
        escrow.finalizeWithdraw(config);
        assertEq(usdc.balanceOf(payer), payerStart + 500e6);
    }

    function test_RevertWhen_RefundByStranger() public {
        vm.prank(payer);
        vm.expectRevert(IUptoEscrow.NotAuthorizedToRefund.selector);
        escrow.refund(config, 1);
    }

    function test_RevertWhen_RefundZero() public {
        vm.prank(receiverAuth);
        vm.expectRevert(IUptoEscrow.ZeroRefund.selector);
        escrow.refund(config, 0);
    }

    /*//////////////////////////////////////////////////////////////
                          REFUND WITH SIGNATURE
    //////////////////////////////////////////////////////////////*/

    function test_RefundWithSignature_AnyoneRelays() public {
        bytes memory signature = _signRefund(RECEIVER_AUTH_KEY, channelId, 0, 150e6);
        vm.expectEmit(true, true, true, true, address(escrow));
        emit IUptoEscrow.Refunded(channelId, stranger, 150e6);
        vm.prank(stranger);
        escrow.refundWithSignature(config, 150e6, 0, signature);
        assertEq(usdc.balanceOf(payer), payerStart + 150e6);
        assertEq(escrow.refundNonce(channelId), 1);
    }

    function test_RefundWithSignature_Erc1271ReceiverAuthorizer() public {
        MockERC1271Wallet wallet = new MockERC1271Wallet(receiverAuth);
        IUptoEscrow.ChannelConfig memory c = _config(bytes32(uint256(31)));
        c.receiverAuthorizer = address(wallet);
        bytes32 id = _deposit(c, DEPOSIT);
        escrow.refundWithSignature(c, 5e6, 0, _signRefund(RECEIVER_AUTH_KEY, id, 0, 5e6));
        assertEq(_balance(id), DEPOSIT - 5e6);
    }

    function test_RevertWhen_RefundWithSignatureReplayed() public {
        bytes memory signature = _signRefund(RECEIVER_AUTH_KEY, channelId, 0, 150e6);
        escrow.refundWithSignature(config, 150e6, 0, signature);
        vm.expectRevert(IUptoEscrow.InvalidRefundNonce.selector);
        escrow.refundWithSignature(config, 150e6, 0, signature);
        assertEq(usdc.balanceOf(payer), payerStart + 150e6);
    }

    /// @dev A direct refund advances the nonce, so a signature prepared for the old nonce can no longer be used.
    function test_RevertWhen_RefundWithSignatureAfterDirectRefund() public {
        bytes memory signature = _signRefund(RECEIVER_AUTH_KEY, channelId, 0, 150e6);
        vm.prank(receiverAuth);
        escrow.refund(config, 1);
        vm.expectRevert(IUptoEscrow.InvalidRefundNonce.selector);
        escrow.refundWithSignature(config, 150e6, 0, signature);
    }

    function test_RevertWhen_RefundWithSignatureFutureNonce() public {
        bytes memory signature = _signRefund(RECEIVER_AUTH_KEY, channelId, 1, 150e6);
        vm.expectRevert(IUptoEscrow.InvalidRefundNonce.selector);
        escrow.refundWithSignature(config, 150e6, 1, signature);
    }

    function test_RevertWhen_RefundWithSignatureWrongSigner() public {
        bytes memory signature = _signRefund(PAYER_AUTH_KEY, channelId, 0, 150e6);
        vm.expectRevert(IUptoEscrow.InvalidSignature.selector);
        escrow.refundWithSignature(config, 150e6, 0, signature);
    }

    function test_RevertWhen_RefundWithSignatureAmountAltered() public {
        bytes memory signature = _signRefund(RECEIVER_AUTH_KEY, channelId, 0, 150e6);
        vm.expectRevert(IUptoEscrow.InvalidSignature.selector);
        escrow.refundWithSignature(config, 151e6, 0, signature);
    }

    function test_RevertWhen_RefundWithSignatureZero() public {
        bytes memory signature = _signRefund(RECEIVER_AUTH_KEY, channelId, 0, 0);
        vm.expectRevert(IUptoEscrow.ZeroRefund.selector);
        escrow.refundWithSignature(config, 0, 0, signature);
    }

    function test_GetRefundDigest_MatchesIndependentEncoding() public view {
        assertEq(escrow.getRefundDigest(channelId, 3, 42), _refundDigest(channelId, 3, 42));
    }

    /// @dev The SDK's channel migration: refund an old channel and fund a new one in one transaction.
    function test_Multicall_RefundThenDeposit() public {
        IUptoEscrow.ChannelConfig memory next = _config(bytes32(uint256(2)));
        bytes[] memory calls = new bytes[](2);
        calls[0] = abi.encodeCall(escrow.refund, (config, DEPOSIT));
        calls[1] = abi.encodeCall(escrow.deposit, (next, 10e6, address(pullCollector), ""));
        vm.prank(receiverAuth);
        escrow.multicall(calls);
        assertEq(_balance(channelId), 0);
        assertEq(_balance(escrow.getChannelId(next)), 10e6);
    }

    function _claim(uint128 total) internal {
        IUptoEscrow.VoucherClaim[] memory rows = _one(_row(config, total, total));
        vm.prank(receiverAuth);
        escrow.claim(rows);
    }
}
