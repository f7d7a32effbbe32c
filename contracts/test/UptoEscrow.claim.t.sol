// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IUptoEscrow} from "../src/interfaces/IUptoEscrow.sol";
import {MockERC1271Wallet} from "../src/mocks/MockERC1271Wallet.sol";
import {EscrowFixture} from "./utils/EscrowFixture.sol";
import {vm} from "./utils/Vm.sol";

/// @notice `claim`, `claimWithSignature`, `settle` and `getClaimBatchDigest`.
contract UptoEscrowClaimTest is EscrowFixture {
    IUptoEscrow.ChannelConfig internal config;
    bytes32 internal channelId;

    function setUp() public override {
        super.setUp();
        config = _config();
        channelId = _deposit(config, DEPOSIT);
    }

    /*//////////////////////////////////////////////////////////////
                                  CLAIM
    //////////////////////////////////////////////////////////////*/

    function test_Claim_RecordsClaim() public {
        IUptoEscrow.VoucherClaim[] memory rows = _one(_row(config, 500e6, 300e6));
        vm.expectEmit(true, true, true, true, address(escrow));
        emit IUptoEscrow.Claimed(channelId, receiverAuth, 300e6, 300e6);
        vm.prank(receiverAuth);
        escrow.claim(rows);

        (uint128 balance, uint128 claimed) = escrow.channels(channelId);
        assertEq(balance, DEPOSIT, "claims move no funds");
        assertEq(claimed, 300e6);
        (uint128 receiverClaimed, uint128 receiverSettled) = escrow.receivers(receiver, address(usdc));
        assertEq(receiverClaimed, 300e6);
        assertEq(receiverSettled, 0);
        assertEq(usdc.balanceOf(address(escrow)), DEPOSIT);
    }

    function test_Claim_AsReceiver() public {
        IUptoEscrow.VoucherClaim[] memory rows = _one(_row(config, 100e6, 100e6));
        vm.prank(receiver);
        escrow.claim(rows);
        assertEq(_claimed(channelId), 100e6);
    }

    function test_Claim_IsCumulative() public {
        IUptoEscrow.VoucherClaim[] memory first = _one(_row(config, 100e6, 100e6));
        IUptoEscrow.VoucherClaim[] memory second = _one(_row(config, 250e6, 240e6));
        vm.startPrank(receiverAuth);
        escrow.claim(first);
        vm.expectEmit(true, true, true, true, address(escrow));
        emit IUptoEscrow.Claimed(channelId, receiverAuth, 140e6, 240e6);
        escrow.claim(second);
        vm.stopPrank();

        assertEq(_claimed(channelId), 240e6);
        (uint128 receiverClaimed,) = escrow.receivers(receiver, address(usdc));
        assertEq(receiverClaimed, 240e6);
    }

    /// @dev No voucher pays twice: replaying the same row, or an older lower one, moves nothing and emits nothing.
    function test_Claim_ReplayIsNoop() public {
        IUptoEscrow.VoucherClaim[] memory high = _one(_row(config, 200e6, 200e6));
        IUptoEscrow.VoucherClaim[] memory low = _one(_row(config, 100e6, 100e6));
        vm.startPrank(receiverAuth);
        escrow.claim(high);

        vm.recordLogs();
        escrow.claim(high);
        escrow.claim(low);
        vm.stopPrank();
        assertEq(_escrowEvents(IUptoEscrow.Claimed.selector), 0, "no Claimed on replay");
        assertEq(_claimed(channelId), 200e6);
        (uint128 receiverClaimed,) = escrow.receivers(receiver, address(usdc));
        assertEq(receiverClaimed, 200e6);
    }

    /// @dev A no-op row is skipped before its signature is looked at, as in x402.
    function test_Claim_NoopRowSkipsSignatureCheck() public {
        IUptoEscrow.VoucherClaim[] memory rows = _one(_row(config, 100e6, 0, hex"00"));
        vm.prank(receiverAuth);
        escrow.claim(rows);
        assertEq(_claimed(channelId), 0);
    }

    function test_Claim_ExactlyAtCeilingAndBalance() public {
        IUptoEscrow.VoucherClaim[] memory rows = _one(_row(config, DEPOSIT, DEPOSIT));
        vm.prank(receiverAuth);
        escrow.claim(rows);
        assertEq(_claimed(channelId), DEPOSIT);
    }

    function test_Claim_BatchAcrossChannelsAggregatesReceiver() public {
        IUptoEscrow.VoucherClaim[] memory rows = new IUptoEscrow.VoucherClaim[](3);
        for (uint256 i; i < 3; ++i) {
            IUptoEscrow.ChannelConfig memory c = _config(bytes32(i + 1));
            _deposit(c, DEPOSIT);
            rows[i] = _row(c, 100e6, uint128(10e6 * (i + 1)));
        }
        vm.prank(receiverAuth);
        escrow.claim(rows);
        for (uint256 i; i < 3; ++i) {
            assertEq(_claimed(escrow.getChannelId(rows[i].voucher.channel)), 10e6 * (i + 1));
        }
        (uint128 receiverClaimed,) = escrow.receivers(receiver, address(usdc));
        assertEq(receiverClaimed, 60e6);
    }

    /// @dev Rows alternating between receivers (A, B, A) still credit each receiver exactly.
    function test_Claim_InterleavedReceivers() public {
        address otherReceiver = vm.addr(0x0BE);
        IUptoEscrow.ChannelConfig memory a1 = _config(bytes32(uint256(11)));
        IUptoEscrow.ChannelConfig memory b = _config(bytes32(uint256(12)));
        b.receiver = otherReceiver;
        IUptoEscrow.ChannelConfig memory a2 = _config(bytes32(uint256(13)));
        _deposit(a1, DEPOSIT);
        _deposit(b, DEPOSIT);
        _deposit(a2, DEPOSIT);
        IUptoEscrow.VoucherClaim[] memory rows = new IUptoEscrow.VoucherClaim[](3);
        rows[0] = _row(a1, 5e6, 5e6);
        rows[1] = _row(b, 7e6, 7e6);
        rows[2] = _row(a2, 11e6, 11e6);
        vm.prank(receiverAuth);
        escrow.claim(rows);

        (uint128 claimedA,) = escrow.receivers(receiver, address(usdc));
        (uint128 claimedB,) = escrow.receivers(otherReceiver, address(usdc));
        assertEq(claimedA, 16e6);
        assertEq(claimedB, 7e6);
    }

    /// @dev The same channel twice in one batch: the second row sees the first row's effect.
    function test_Claim_SameChannelTwiceInBatch() public {
        IUptoEscrow.VoucherClaim[] memory rows = new IUptoEscrow.VoucherClaim[](3);
        rows[0] = _row(config, 100e6, 100e6);
        rows[1] = _row(config, 300e6, 250e6);
        rows[2] = _row(config, 100e6, 100e6); // stale: no-op
        vm.prank(receiverAuth);
        escrow.claim(rows);
        assertEq(_claimed(channelId), 250e6);
        (uint128 receiverClaimed,) = escrow.receivers(receiver, address(usdc));
        assertEq(receiverClaimed, 250e6);
    }

    function test_RevertWhen_ClaimBatchIsEmpty() public {
        vm.prank(receiverAuth);
        vm.expectRevert(IUptoEscrow.EmptyBatch.selector);
        escrow.claim(new IUptoEscrow.VoucherClaim[](0));
    }

    function test_RevertWhen_ClaimCallerIsNotReceiverSide() public {
        IUptoEscrow.VoucherClaim[] memory rows = _one(_row(config, 100e6, 100e6));
        vm.prank(payer);
        vm.expectRevert(IUptoEscrow.NotAuthorizedToClaim.selector);
        escrow.claim(rows);
    }

    /// @dev Authorization is per row: one foreign row sinks the whole batch.
    function test_RevertWhen_ClaimBatchHasForeignRow() public {
        IUptoEscrow.ChannelConfig memory foreign = _config(bytes32(uint256(99)));
        foreign.receiver = stranger;
        foreign.receiverAuthorizer = stranger;
        _deposit(foreign, DEPOSIT);
        IUptoEscrow.VoucherClaim[] memory rows = new IUptoEscrow.VoucherClaim[](2);
        rows[0] = _row(config, 100e6, 100e6);
        rows[1] = _row(foreign, 100e6, 100e6);
        vm.prank(receiverAuth);
        vm.expectRevert(IUptoEscrow.NotAuthorizedToClaim.selector);
        escrow.claim(rows);
    }

    function test_RevertWhen_ClaimExceedsCeiling() public {
        IUptoEscrow.VoucherClaim[] memory rows = _one(_row(config, 100e6, 100e6 + 1));
        vm.prank(receiverAuth);
        vm.expectRevert(IUptoEscrow.ClaimExceedsCeiling.selector);
        escrow.claim(rows);
    }

    function test_RevertWhen_ClaimExceedsBalance() public {
        IUptoEscrow.VoucherClaim[] memory rows = _one(_row(config, DEPOSIT + 1, DEPOSIT + 1));
        vm.prank(receiverAuth);
        vm.expectRevert(IUptoEscrow.ClaimExceedsBalance.selector);
        escrow.claim(rows);
    }

    function test_RevertWhen_ClaimOnUnfundedChannel() public {
        IUptoEscrow.VoucherClaim[] memory rows = _one(_row(_config(bytes32(uint256(404))), 1, 1));
        vm.prank(receiverAuth);
        vm.expectRevert(IUptoEscrow.ClaimExceedsBalance.selector);
        escrow.claim(rows);
    }

    function test_RevertWhen_ClaimSignedByStranger() public {
        bytes memory signature = _signVoucher(STRANGER_KEY, channelId, 100e6);
        IUptoEscrow.VoucherClaim[] memory rows = _one(_row(config, 100e6, 100e6, signature));
        vm.prank(receiverAuth);
        vm.expectRevert(IUptoEscrow.InvalidSignature.selector);
        escrow.claim(rows);
    }

    /// @dev The ceiling is part of what is signed: raising it invalidates the signature.
    function test_RevertWhen_ClaimCeilingIsRaised() public {
        bytes memory signature = _signVoucher(PAYER_AUTH_KEY, channelId, 100e6);
        IUptoEscrow.VoucherClaim[] memory rows = _one(_row(config, 200e6, 150e6, signature));
        vm.prank(receiverAuth);
        vm.expectRevert(IUptoEscrow.InvalidSignature.selector);
        escrow.claim(rows);
    }

    /// @dev A failing row reverts the rows applied before it.
    function test_RevertWhen_LaterRowFails_EarlierRowsAreUndone() public {
        IUptoEscrow.VoucherClaim[] memory rows = new IUptoEscrow.VoucherClaim[](2);
        rows[0] = _row(config, 100e6, 100e6);
        rows[1] = _row(config, 200e6, 201e6);
        vm.prank(receiverAuth);
        vm.expectRevert(IUptoEscrow.ClaimExceedsCeiling.selector);
        escrow.claim(rows);
        assertEq(_claimed(channelId), 0);
    }

    /*//////////////////////////////////////////////////////////////
                           CLAIM WITH SIGNATURE
    //////////////////////////////////////////////////////////////*/

    function test_ClaimWithSignature_AnyoneRelays() public {
        IUptoEscrow.ChannelConfig memory other = _config(bytes32(uint256(5)));
        bytes32 otherId = _deposit(other, DEPOSIT);
        IUptoEscrow.VoucherClaim[] memory rows = new IUptoEscrow.VoucherClaim[](2);
        rows[0] = _row(config, 100e6, 80e6);
        rows[1] = _row(other, 50e6, 50e6);
        bytes memory signature = _signClaimBatch(RECEIVER_AUTH_KEY, rows);

        vm.expectEmit(true, true, true, true, address(escrow));
        emit IUptoEscrow.Claimed(channelId, stranger, 80e6, 80e6);
        vm.expectEmit(true, true, true, true, address(escrow));
        emit IUptoEscrow.Claimed(otherId, stranger, 50e6, 50e6);
        vm.prank(stranger);
        escrow.claimWithSignature(rows, signature);

        assertEq(_claimed(channelId), 80e6);
        assertEq(_claimed(otherId), 50e6);
        (uint128 receiverClaimed,) = escrow.receivers(receiver, address(usdc));
        assertEq(receiverClaimed, 130e6);
    }

    function test_ClaimWithSignature_Erc1271ReceiverAuthorizer() public {
        MockERC1271Wallet wallet = new MockERC1271Wallet(receiverAuth);
        IUptoEscrow.ChannelConfig memory c = _config(bytes32(uint256(6)));
        c.receiverAuthorizer = address(wallet);
        bytes32 id = _deposit(c, DEPOSIT);
        IUptoEscrow.VoucherClaim[] memory rows = _one(_row(c, 10e6, 10e6));
        bytes memory signature = _signClaimBatch(RECEIVER_AUTH_KEY, rows);

        escrow.claimWithSignature(rows, signature);
        assertEq(_claimed(id), 10e6);
    }

    function test_RevertWhen_ClaimWithSignatureBatchIsEmpty() public {
        vm.expectRevert(IUptoEscrow.EmptyBatch.selector);
        escrow.claimWithSignature(new IUptoEscrow.VoucherClaim[](0), "");
    }

    function test_RevertWhen_ClaimWithSignatureSignedByStranger() public {
        IUptoEscrow.VoucherClaim[] memory rows = _one(_row(config, 100e6, 100e6));
        bytes memory signature = _signClaimBatch(STRANGER_KEY, rows);
        vm.expectRevert(IUptoEscrow.InvalidSignature.selector);
        escrow.claimWithSignature(rows, signature);
    }

    /// @dev The batch signature covers every row's channel id, ceiling and total: changing any one breaks it.
    function test_RevertWhen_ClaimWithSignatureRowIsAltered() public {
        IUptoEscrow.VoucherClaim[] memory rows = _one(_row(config, 100e6, 60e6));
        bytes memory signature = _signClaimBatch(RECEIVER_AUTH_KEY, rows);
        rows[0].totalClaimed = 100e6;
        vm.expectRevert(IUptoEscrow.InvalidSignature.selector);
        escrow.claimWithSignature(rows, signature);
    }

    function test_RevertWhen_ClaimWithSignatureRowAdded() public {
        IUptoEscrow.VoucherClaim[] memory rows = _one(_row(config, 100e6, 60e6));
        bytes memory signature = _signClaimBatch(RECEIVER_AUTH_KEY, rows);
        IUptoEscrow.ChannelConfig memory other = _config(bytes32(uint256(8)));
        _deposit(other, DEPOSIT);
        IUptoEscrow.VoucherClaim[] memory longer = new IUptoEscrow.VoucherClaim[](2);
        longer[0] = rows[0];
        longer[1] = _row(other, 1e6, 1e6);
        vm.expectRevert(IUptoEscrow.InvalidSignature.selector);
        escrow.claimWithSignature(longer, signature);
    }

    function test_RevertWhen_ClaimWithSignatureMixesAuthorizers() public {
        IUptoEscrow.ChannelConfig memory foreign = _config(bytes32(uint256(9)));
        foreign.receiverAuthorizer = stranger;
        _deposit(foreign, DEPOSIT);
        IUptoEscrow.VoucherClaim[] memory rows = new IUptoEscrow.VoucherClaim[](2);
        rows[0] = _row(config, 100e6, 100e6);
        rows[1] = _row(foreign, 100e6, 100e6);
        bytes memory signature = _signClaimBatch(RECEIVER_AUTH_KEY, rows);
        vm.expectRevert(IUptoEscrow.NotReceiverAuthorizer.selector);
        escrow.claimWithSignature(rows, signature);
    }

    function test_RevertWhen_ClaimWithSignatureWalletRevoked() public {
        MockERC1271Wallet wallet = new MockERC1271Wallet(receiverAuth);
        IUptoEscrow.ChannelConfig memory c = _config(bytes32(uint256(10)));
        c.receiverAuthorizer = address(wallet);
        _deposit(c, DEPOSIT);
        IUptoEscrow.VoucherClaim[] memory rows = _one(_row(c, 10e6, 10e6));
        bytes memory signature = _signClaimBatch(RECEIVER_AUTH_KEY, rows);
        wallet.setEnabled(false);
        vm.expectRevert(IUptoEscrow.InvalidSignature.selector);
        escrow.claimWithSignature(rows, signature);
    }

    function test_GetClaimBatchDigest_MatchesIndependentEncoding() public view {
        IUptoEscrow.VoucherClaim[] memory rows = new IUptoEscrow.VoucherClaim[](2);
        rows[0] = _row(config, 100e6, 60e6);
        rows[1] = _row(_config(bytes32(uint256(3))), 7, 7);
        assertEq(escrow.getClaimBatchDigest(rows), _claimBatchDigest(rows));
    }

    function test_GetClaimBatchDigest_EmptyBatchHashesEmptyArray() public view {
        bytes32 structHash = keccak256(
            abi.encode(
                keccak256(
                    "ClaimBatch(ClaimEntry[] claims)ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)"
                ),
                keccak256("")
            )
        );
        assertEq(escrow.getClaimBatchDigest(new IUptoEscrow.VoucherClaim[](0)), _typedDataHash(structHash));
    }

    /*//////////////////////////////////////////////////////////////
                                 SETTLE
    //////////////////////////////////////////////////////////////*/

    function test_Settle_PaysReceiver() public {
        _claimAs(receiverAuth, _one(_row(config, 300e6, 300e6)));

        vm.expectEmit(true, true, true, true, address(escrow));
        emit IUptoEscrow.Settled(receiver, address(usdc), stranger, 300e6);
        vm.prank(stranger);
        escrow.settle(receiver, address(usdc));

        assertEq(usdc.balanceOf(receiver), 300e6);
        assertEq(usdc.balanceOf(address(escrow)), DEPOSIT - 300e6);
        (uint128 receiverClaimed, uint128 receiverSettled) = escrow.receivers(receiver, address(usdc));
        assertEq(receiverClaimed, 300e6);
        assertEq(receiverSettled, 300e6);
        (uint128 balance, uint128 claimed) = escrow.channels(channelId);
        assertEq(balance, DEPOSIT, "channel balance keeps settled claims");
        assertEq(claimed, 300e6);
    }

    function test_Settle_IsIdempotent() public {
        _claimAs(receiverAuth, _one(_row(config, 300e6, 300e6)));
        escrow.settle(receiver, address(usdc));

        vm.recordLogs();
        escrow.settle(receiver, address(usdc));
        assertEq(_escrowEvents(IUptoEscrow.Settled.selector), 0, "no Settled when nothing is due");
        assertEq(usdc.balanceOf(receiver), 300e6);
    }

    function test_Settle_NothingClaimedIsNoop() public {
        vm.recordLogs();
        escrow.settle(stranger, address(usdc));
        assertEq(_escrowEvents(IUptoEscrow.Settled.selector), 0);
        assertEq(usdc.balanceOf(address(escrow)), DEPOSIT);
    }

    function test_Settle_SweepsAcrossChannelsAndClaims() public {
        IUptoEscrow.ChannelConfig memory other = _config(bytes32(uint256(2)));
        _deposit(other, DEPOSIT);
        _claimAs(receiverAuth, _one(_row(config, 100e6, 100e6)));
        _claimAs(receiver, _one(_row(other, 40e6, 40e6)));
        escrow.settle(receiver, address(usdc));
        assertEq(usdc.balanceOf(receiver), 140e6);

        _claimAs(receiverAuth, _one(_row(config, 150e6, 150e6)));
        escrow.settle(receiver, address(usdc));
        assertEq(usdc.balanceOf(receiver), 190e6);
    }

    /// @dev The SDK batches claim and settle through `multicall`; msg.sender is kept for each inner call.
    function test_Multicall_ClaimThenSettle() public {
        IUptoEscrow.VoucherClaim[] memory rows = _one(_row(config, 100e6, 100e6));
        bytes[] memory calls = new bytes[](2);
        calls[0] = abi.encodeCall(escrow.claim, (rows));
        calls[1] = abi.encodeCall(escrow.settle, (receiver, address(usdc)));
        vm.prank(receiverAuth);
        escrow.multicall(calls);
        assertEq(usdc.balanceOf(receiver), 100e6);
    }

    function test_RevertWhen_MulticallInnerCallFails() public {
        IUptoEscrow.VoucherClaim[] memory rows = _one(_row(config, 100e6, 100e6));
        bytes[] memory calls = new bytes[](2);
        calls[0] = abi.encodeCall(escrow.settle, (receiver, address(usdc)));
        calls[1] = abi.encodeCall(escrow.claim, (rows));
        vm.prank(stranger);
        vm.expectRevert(IUptoEscrow.NotAuthorizedToClaim.selector);
        escrow.multicall(calls);
    }

    function _claimAs(address caller, IUptoEscrow.VoucherClaim[] memory rows) internal {
        vm.prank(caller);
        escrow.claim(rows);
    }
}
