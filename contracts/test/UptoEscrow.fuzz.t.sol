// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IUptoEscrow} from "../src/interfaces/IUptoEscrow.sol";
import {EscrowFixture} from "./utils/EscrowFixture.sol";
import {vm} from "./utils/Vm.sol";

/// @notice Property tests over amounts, configs and keys.
contract UptoEscrowFuzzTest is EscrowFixture {
    uint128 internal constant MAX_DEPOSIT = 1e30;

    /*//////////////////////////////////////////////////////////////
                                  CLAIMS
    //////////////////////////////////////////////////////////////*/

    /// @dev One row against a funded channel: exactly one of no-op, ceiling revert, balance revert, or success, in
    ///      x402's order of checks.
    function testFuzz_ClaimRespectsCeilingAndBalance(uint128 deposit, uint128 ceiling, uint128 total) public {
        deposit = uint128(bound(deposit, 1, MAX_DEPOSIT));
        IUptoEscrow.ChannelConfig memory config = _config();
        bytes32 channelId = _deposit(config, deposit);
        IUptoEscrow.VoucherClaim[] memory rows = _one(_row(config, ceiling, total));

        vm.prank(receiverAuth);
        if (total == 0) {
            escrow.claim(rows);
            assertEq(_claimed(channelId), 0);
            return;
        }
        if (total > ceiling) {
            vm.expectRevert(IUptoEscrow.ClaimExceedsCeiling.selector);
        } else if (total > deposit) {
            vm.expectRevert(IUptoEscrow.ClaimExceedsBalance.selector);
        }
        escrow.claim(rows);
        bool applied = total <= ceiling && total <= deposit;
        assertEq(_claimed(channelId), applied ? total : 0);
        assertLe(_claimed(channelId), _balance(channelId), "claimed never exceeds balance");
    }

    /// @dev Vouchers are cumulative: applying a then b leaves max(a, b), and the receiver is credited the same.
    function testFuzz_VoucherMonotonicity(uint128 a, uint128 b) public {
        uint128 deposit = 1_000_000e6;
        a = uint128(bound(a, 0, deposit));
        b = uint128(bound(b, 0, deposit));
        IUptoEscrow.ChannelConfig memory config = _config();
        bytes32 channelId = _deposit(config, deposit);
        IUptoEscrow.VoucherClaim[] memory first = _one(_row(config, a, a));
        IUptoEscrow.VoucherClaim[] memory second = _one(_row(config, b, b));

        vm.startPrank(receiverAuth);
        escrow.claim(first);
        uint128 afterFirst = _claimed(channelId);
        escrow.claim(second);
        vm.stopPrank();

        uint128 expected = a > b ? a : b;
        assertGe(_claimed(channelId), afterFirst, "totalClaimed never decreases");
        assertEq(_claimed(channelId), expected);
        (uint128 receiverClaimed,) = escrow.receivers(receiver, address(usdc));
        assertEq(receiverClaimed, expected);
    }

    /// @dev Replaying an applied voucher any number of times, directly or relayed, pays nothing more.
    function testFuzz_ReplayMovesNothing(uint128 total, uint8 replays) public {
        total = uint128(bound(total, 1, DEPOSIT));
        IUptoEscrow.ChannelConfig memory config = _config();
        bytes32 channelId = _deposit(config, DEPOSIT);
        IUptoEscrow.VoucherClaim[] memory rows = _one(_row(config, total, total));
        bytes memory batchSig = _signClaimBatch(RECEIVER_AUTH_KEY, rows);
        vm.prank(receiverAuth);
        escrow.claim(rows);
        escrow.settle(receiver, address(usdc));

        for (uint256 i; i < bound(replays, 1, 8); ++i) {
            if (i % 2 == 0) {
                vm.prank(receiverAuth);
                escrow.claim(rows);
            } else {
                escrow.claimWithSignature(rows, batchSig);
            }
            escrow.settle(receiver, address(usdc));
        }
        assertEq(_claimed(channelId), total);
        assertEq(usdc.balanceOf(receiver), total);
        assertEq(usdc.balanceOf(address(escrow)), DEPOSIT - total);
    }

    /// @dev A partial claim below the ceiling leaves the rest of the voucher claimable later, never beyond it.
    function testFuzz_PartialClaimsUpToCeiling(uint128 ceiling, uint128 first, uint128 second) public {
        ceiling = uint128(bound(ceiling, 1, DEPOSIT));
        first = uint128(bound(first, 0, ceiling));
        second = uint128(bound(second, 0, DEPOSIT));
        IUptoEscrow.ChannelConfig memory config = _config();
        bytes32 channelId = _deposit(config, DEPOSIT);
        IUptoEscrow.VoucherClaim[] memory rowsA = _one(_row(config, ceiling, first));
        IUptoEscrow.VoucherClaim[] memory rowsB = _one(_row(config, ceiling, second));
        vm.startPrank(receiverAuth);
        escrow.claim(rowsA);
        if (second > ceiling && second > first) vm.expectRevert(IUptoEscrow.ClaimExceedsCeiling.selector);
        escrow.claim(rowsB);
        vm.stopPrank();
        assertLe(_claimed(channelId), ceiling);
    }

    /*//////////////////////////////////////////////////////////////
                               HASHING
    //////////////////////////////////////////////////////////////*/

    /// @dev The assembly hashing equals plain `abi.encode` hashing for any config.
    function testFuzz_ChannelIdMatchesAbiEncoding(IUptoEscrow.ChannelConfig memory config) public view {
        bytes32 expected = _typedDataHash(keccak256(abi.encode(escrow.CHANNEL_CONFIG_TYPEHASH(), config)));
        assertEq(escrow.getChannelId(config), expected);
    }

    function testFuzz_DigestsMatchAbiEncoding(bytes32 channelId, uint128 ceiling, uint256 nonce, uint128 amount)
        public
        view
    {
        assertEq(escrow.getVoucherDigest(channelId, ceiling), _voucherDigest(channelId, ceiling));
        assertEq(escrow.getRefundDigest(channelId, nonce, amount), _refundDigest(channelId, nonce, amount));
    }

    function testFuzz_ClaimBatchDigestMatchesAbiEncoding(bytes32 salt, uint128[4] memory amounts, uint8 n) public view {
        n = uint8(bound(n, 0, 4));
        IUptoEscrow.VoucherClaim[] memory rows = new IUptoEscrow.VoucherClaim[](n);
        for (uint256 i; i < n; ++i) {
            IUptoEscrow.ChannelConfig memory config = _config(keccak256(abi.encode(salt, i)));
            rows[i] = _row(config, amounts[i], amounts[(i + 1) % 4], "");
        }
        assertEq(escrow.getClaimBatchDigest(rows), _claimBatchDigest(rows));
    }

    /// @dev For any key, the low-s signature is accepted and its high-s twin is not.
    function testFuzz_HighSTwinRejected(uint256 key, uint128 total) public {
        key = bound(key, 1, SECP256K1_N - 1);
        total = uint128(bound(total, 1, DEPOSIT));
        IUptoEscrow.ChannelConfig memory config = _config();
        config.payerAuthorizer = vm.addr(key);
        bytes32 channelId = _deposit(config, DEPOSIT);
        bytes memory good = _signVoucher(key, channelId, total);

        IUptoEscrow.VoucherClaim[] memory twin = _one(_row(config, total, total, _highS(good)));
        vm.prank(receiverAuth);
        vm.expectRevert(IUptoEscrow.InvalidSignature.selector);
        escrow.claim(twin);

        IUptoEscrow.VoucherClaim[] memory rows = _one(_row(config, total, total, good));
        vm.prank(receiverAuth);
        escrow.claim(rows);
        assertEq(_claimed(channelId), total);
    }

    /*//////////////////////////////////////////////////////////////
                             REFUND AND EXIT
    //////////////////////////////////////////////////////////////*/

    function testFuzz_RefundCapsToUnclaimed(uint128 deposit, uint128 claimed, uint128 amount) public {
        deposit = uint128(bound(deposit, 1, MAX_DEPOSIT));
        claimed = uint128(bound(claimed, 0, deposit));
        amount = uint128(bound(amount, 1, type(uint128).max));
        IUptoEscrow.ChannelConfig memory config = _config();
        bytes32 channelId = _deposit(config, deposit);
        IUptoEscrow.VoucherClaim[] memory rows = _one(_row(config, claimed, claimed));
        vm.prank(receiverAuth);
        escrow.claim(rows);

        uint256 before = usdc.balanceOf(payer);
        vm.prank(receiver);
        escrow.refund(config, amount);
        uint256 available = deposit - claimed;
        uint256 refunded = amount < available ? amount : available;
        assertEq(usdc.balanceOf(payer) - before, refunded);
        assertEq(_balance(channelId), deposit - refunded);
        assertEq(_claimed(channelId), claimed);
        assertEq(escrow.refundNonce(channelId), 1);
    }

    /// @dev After the delay the payer gets back min(request, balance - totalClaimed at finalization).
    function testFuzz_WithdrawReturnsUnclaimed(uint128 deposit, uint128 request, uint128 claimedDuringDelay) public {
        deposit = uint128(bound(deposit, 1, MAX_DEPOSIT));
        request = uint128(bound(request, 1, deposit));
        claimedDuringDelay = uint128(bound(claimedDuringDelay, 0, deposit));
        IUptoEscrow.ChannelConfig memory config = _config();
        bytes32 channelId = _deposit(config, deposit);
        vm.prank(payer);
        escrow.initiateWithdraw(config, request);
        IUptoEscrow.VoucherClaim[] memory rows = _one(_row(config, claimedDuringDelay, claimedDuringDelay));
        vm.prank(receiverAuth);
        escrow.claim(rows);

        vm.warp(block.timestamp + DELAY);
        uint256 before = usdc.balanceOf(payer);
        vm.prank(payer);
        escrow.finalizeWithdraw(config);
        uint256 available = deposit - claimedDuringDelay;
        uint256 expected = request < available ? request : available;
        assertEq(usdc.balanceOf(payer) - before, expected);
        assertEq(_balance(channelId), deposit - expected);

        escrow.settle(receiver, address(usdc));
        assertEq(usdc.balanceOf(receiver), claimedDuringDelay, "receiver keeps every recorded claim");
    }
}
