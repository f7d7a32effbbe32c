// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IUptoEscrow} from "../src/interfaces/IUptoEscrow.sol";
import {UptoEscrow} from "../src/UptoEscrow.sol";
import {MockERC1271Wallet} from "../src/mocks/MockERC1271Wallet.sol";
import {EscrowFixture} from "./utils/EscrowFixture.sol";
import {vm} from "./utils/Vm.sol";

/// @notice Who may sign what, and which signatures must never pass: other chains, other deployments, other
///         channels, other message types, malleable twins, malformed encodings.
contract UptoEscrowSignatureTest is EscrowFixture {
    IUptoEscrow.ChannelConfig internal config;
    bytes32 internal channelId;

    function setUp() public override {
        super.setUp();
        config = _config();
        channelId = _deposit(config, DEPOSIT);
    }

    function test_GetVoucherDigest_MatchesIndependentEncoding() public view {
        assertEq(escrow.getVoucherDigest(channelId, 5000), _voucherDigest(channelId, 5000));
    }

    /*//////////////////////////////////////////////////////////////
                              VOUCHER SIGNER
    //////////////////////////////////////////////////////////////*/

    function test_Claim_PayerSignsWhenNoAuthorizer() public {
        IUptoEscrow.ChannelConfig memory c = _config(bytes32(uint256(1)));
        c.payerAuthorizer = address(0);
        bytes32 id = _deposit(c, DEPOSIT);
        _claimOk(c, _signVoucher(PAYER_KEY, id, 10e6));
        assertEq(_claimed(id), 10e6);
    }

    function test_RevertWhen_NoAuthorizerAndAnotherKeySigns() public {
        IUptoEscrow.ChannelConfig memory c = _config(bytes32(uint256(1)));
        c.payerAuthorizer = address(0);
        bytes32 id = _deposit(c, DEPOSIT);
        _claimFails(c, _signVoucher(PAYER_AUTH_KEY, id, 10e6), IUptoEscrow.InvalidSignature.selector);
    }

    /// @dev Once a payer authorizer is committed, the payer's own key no longer signs vouchers.
    function test_RevertWhen_AuthorizerSetAndPayerSigns() public {
        _claimFails(config, _signVoucher(PAYER_KEY, channelId, 10e6), IUptoEscrow.InvalidSignature.selector);
    }

    function test_Claim_Erc1271PayerWallet() public {
        (IUptoEscrow.ChannelConfig memory c, bytes32 id, MockERC1271Wallet wallet) = _walletChannel();
        _claimOk(c, _signVoucher(PAYER_KEY, id, 10e6));
        assertEq(_claimed(id), 10e6);
        assertTrue(wallet.enabled());
    }

    function test_RevertWhen_Erc1271PayerWalletRejects() public {
        (IUptoEscrow.ChannelConfig memory c, bytes32 id, MockERC1271Wallet wallet) = _walletChannel();
        wallet.setEnabled(false);
        _claimFails(c, _signVoucher(PAYER_KEY, id, 10e6), IUptoEscrow.InvalidSignature.selector);
    }

    function test_RevertWhen_Erc1271PayerWalletWrongKey() public {
        (IUptoEscrow.ChannelConfig memory c, bytes32 id,) = _walletChannel();
        _claimFails(c, _signVoucher(STRANGER_KEY, id, 10e6), IUptoEscrow.InvalidSignature.selector);
    }

    /*//////////////////////////////////////////////////////////////
                              DOMAIN BINDING
    //////////////////////////////////////////////////////////////*/

    /// @dev The same config on another chain is another channel, and vouchers do not cross over.
    function test_RevertWhen_VoucherSignedForOtherChain() public {
        bytes memory signature = _signVoucher(PAYER_AUTH_KEY, channelId, 10e6);
        vm.chainId(8453);
        bytes32 otherChainId = _deposit(config, DEPOSIT);
        assertTrue(otherChainId != channelId, "channel id is chain-bound");
        _claimFails(config, signature, IUptoEscrow.InvalidSignature.selector);
    }

    function test_RevertWhen_VoucherDigestUsesOtherChainId() public {
        bytes32 structHash = keccak256(abi.encode(escrow.VOUCHER_TYPEHASH(), channelId, uint128(10e6)));
        bytes32 digest = keccak256(abi.encodePacked("\x19\x01", _domainSeparator(address(escrow), 1), structHash));
        _claimFails(config, _sign(PAYER_AUTH_KEY, digest), IUptoEscrow.InvalidSignature.selector);
    }

    /// @dev A second deployment has its own domain: its vouchers and channel ids are not valid here.
    function test_RevertWhen_VoucherSignedForOtherContract() public {
        UptoEscrow other = new UptoEscrow();
        assertTrue(other.getChannelId(config) != channelId, "channel id is deployment-bound");
        bytes32 otherDigest = other.getVoucherDigest(channelId, 10e6);
        _claimFails(config, _sign(PAYER_AUTH_KEY, otherDigest), IUptoEscrow.InvalidSignature.selector);
    }

    function test_RevertWhen_VoucherIsForOtherChannel() public {
        IUptoEscrow.ChannelConfig memory b = _config(bytes32(uint256(2)));
        bytes32 idB = _deposit(b, DEPOSIT);
        _claimFails(config, _signVoucher(PAYER_AUTH_KEY, idB, 10e6), IUptoEscrow.InvalidSignature.selector);
    }

    /// @dev Distinct type hashes: a refund signature is not a voucher, nor a claim batch, and vice versa.
    function test_RevertWhen_SignatureReusedAcrossTypes() public {
        // Refund(channelId, 0, 10e6) signed by the receiver authorizer...
        bytes memory refundSig = _signRefund(RECEIVER_AUTH_KEY, channelId, 0, 10e6);
        // ...as a claim batch signature,
        IUptoEscrow.VoucherClaim[] memory rows = _one(_row(config, 10e6, 10e6));
        vm.expectRevert(IUptoEscrow.InvalidSignature.selector);
        escrow.claimWithSignature(rows, refundSig);
        // and a voucher signature by the same key as a refund.
        bytes memory voucherSig = _signVoucher(RECEIVER_AUTH_KEY, channelId, 10e6);
        vm.expectRevert(IUptoEscrow.InvalidSignature.selector);
        escrow.refundWithSignature(config, 10e6, 0, voucherSig);
    }

    /*//////////////////////////////////////////////////////////////
                          MALLEABLE AND MALFORMED
    //////////////////////////////////////////////////////////////*/

    function test_RevertWhen_VoucherSignatureIsHighS() public {
        bytes memory good = _signVoucher(PAYER_AUTH_KEY, channelId, 10e6);
        bytes memory twin = _highS(good);
        assertEq(_ecrecover(_voucherDigest(channelId, 10e6), twin), payerAuth, "twin recovers with raw ecrecover");
        _claimFails(config, twin, IUptoEscrow.InvalidSignature.selector);
        _claimOk(config, good);
    }

    function test_RevertWhen_ClaimBatchSignatureIsHighS() public {
        IUptoEscrow.VoucherClaim[] memory rows = _one(_row(config, 10e6, 10e6));
        bytes memory twin = _highS(_signClaimBatch(RECEIVER_AUTH_KEY, rows));
        vm.expectRevert(IUptoEscrow.InvalidSignature.selector);
        escrow.claimWithSignature(rows, twin);
    }

    function test_RevertWhen_RefundSignatureIsHighS() public {
        bytes memory twin = _highS(_signRefund(RECEIVER_AUTH_KEY, channelId, 0, 10e6));
        vm.expectRevert(IUptoEscrow.InvalidSignature.selector);
        escrow.refundWithSignature(config, 10e6, 0, twin);
    }

    function test_RevertWhen_VoucherSignatureIsShort() public {
        bytes memory good = _signVoucher(PAYER_AUTH_KEY, channelId, 10e6);
        bytes memory short = new bytes(64);
        for (uint256 i; i < 64; ++i) {
            short[i] = good[i];
        }
        _claimFails(config, short, IUptoEscrow.InvalidSignature.selector);
    }

    function test_RevertWhen_VoucherSignatureIsLong() public {
        bytes memory long = bytes.concat(_signVoucher(PAYER_AUTH_KEY, channelId, 10e6), hex"00");
        _claimFails(config, long, IUptoEscrow.InvalidSignature.selector);
    }

    function test_RevertWhen_VoucherSignatureHasRawV() public {
        bytes memory signature = _signVoucher(PAYER_AUTH_KEY, channelId, 10e6);
        signature[64] = bytes1(uint8(signature[64]) - 27);
        _claimFails(config, signature, IUptoEscrow.InvalidSignature.selector);
    }

    function test_RevertWhen_VoucherSignatureIsEmpty() public {
        _claimFails(config, "", IUptoEscrow.InvalidSignature.selector);
    }

    /// @dev A zero payer authorizer never recovers from garbage: the zero address is not a valid signer.
    function test_RevertWhen_GarbageSignatureAndNoAuthorizer() public {
        IUptoEscrow.ChannelConfig memory c = _config(bytes32(uint256(3)));
        c.payerAuthorizer = address(0);
        _deposit(c, DEPOSIT);
        _claimFails(c, new bytes(65), IUptoEscrow.InvalidSignature.selector);
    }

    /*//////////////////////////////////////////////////////////////
                          NON-CANONICAL CALLDATA
    //////////////////////////////////////////////////////////////*/

    // claim(VoucherClaim[]) calldata with one row: selector, array offset, length, row offset, then the row head at
    // byte 4 + 0x60: config (words 0-6), maxClaimableAmount (7), signature offset (8), totalClaimed (9).
    uint256 internal constant ROW = 4 + 0x60;

    function test_RevertWhen_ClaimAmountWordIsDirty() public {
        bytes memory data = _claimCalldata();
        data[ROW + 9 * 32 + 15] = 0x01; // bit 128 of totalClaimed
        _expectRawClaimFails(data);
    }

    function test_RevertWhen_ClaimAddressWordIsDirty() public {
        bytes memory data = _claimCalldata();
        data[ROW + 1 * 32 + 11] = 0x01; // bit 160 of payerAuthorizer
        _expectRawClaimFails(data);
    }

    function test_RevertWhen_ClaimRowOffsetOutOfBounds() public {
        bytes memory data = _claimCalldata();
        data[4 + 0x40 + 24] = 0x01; // row offset += 2**56
        _expectRawClaimFails(data);
    }

    function test_RevertWhen_ClaimSignatureOffsetOutOfBounds() public {
        bytes memory data = _claimCalldata();
        data[ROW + 8 * 32 + 24] = 0x01; // signature offset += 2**56
        _expectRawClaimFails(data);
    }

    function test_RevertWhen_ClaimSignatureRunsPastCalldata() public {
        bytes memory data = _claimCalldata();
        // Drop the last byte of the 65-byte signature and its padding: the declared length no longer fits.
        uint256 cut = data.length - 32;
        assembly ("memory-safe") {
            mstore(data, cut)
        }
        _expectRawClaimFails(data);
    }

    function _claimCalldata() internal view returns (bytes memory data) {
        IUptoEscrow.VoucherClaim[] memory rows = _one(_row(config, 10e6, 10e6));
        data = abi.encodeCall(escrow.claim, (rows));
        assertEq(data.length, ROW + 10 * 32 + 32 + 96, "expected layout");
    }

    /// @dev The untouched calldata must succeed (checked on a snapshot), so the failure is due to the edit.
    function _expectRawClaimFails(bytes memory data) internal {
        bytes memory good = _claimCalldata();
        uint256 snapshot = vm.snapshotState();
        vm.prank(receiverAuth);
        (bool ok,) = address(escrow).call(good);
        assertTrue(ok, "canonical calldata is accepted");
        vm.revertToState(snapshot);
        vm.prank(receiverAuth);
        (ok,) = address(escrow).call(data);
        assertFalse(ok, "edited calldata is rejected");
        assertEq(_claimed(channelId), 0);
    }

    /*//////////////////////////////////////////////////////////////
                                 HELPERS
    //////////////////////////////////////////////////////////////*/

    function _walletChannel()
        internal
        returns (IUptoEscrow.ChannelConfig memory c, bytes32 id, MockERC1271Wallet wallet)
    {
        wallet = new MockERC1271Wallet(payer);
        c = _config(bytes32(uint256(4)));
        c.payer = address(wallet);
        c.payerAuthorizer = address(0);
        id = _deposit(c, DEPOSIT);
    }

    function _claimOk(IUptoEscrow.ChannelConfig memory c, bytes memory signature) internal {
        IUptoEscrow.VoucherClaim[] memory rows = _one(_row(c, 10e6, 10e6, signature));
        vm.prank(receiverAuth);
        escrow.claim(rows);
    }

    function _claimFails(IUptoEscrow.ChannelConfig memory c, bytes memory signature, bytes4 error) internal {
        IUptoEscrow.VoucherClaim[] memory rows = _one(_row(c, 10e6, 10e6, signature));
        vm.prank(receiverAuth);
        vm.expectRevert(error);
        escrow.claim(rows);
    }

    function _ecrecover(bytes32 digest, bytes memory signature) internal pure returns (address) {
        bytes32 r;
        bytes32 s;
        uint8 v;
        assembly ("memory-safe") {
            r := mload(add(signature, 0x20))
            s := mload(add(signature, 0x40))
            v := byte(0, mload(add(signature, 0x60)))
        }
        return ecrecover(digest, v, r, s);
    }
}
