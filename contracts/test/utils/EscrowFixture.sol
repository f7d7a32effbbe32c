// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {Erc3009DepositCollector} from "../../src/Erc3009DepositCollector.sol";
import {IUptoEscrow} from "../../src/interfaces/IUptoEscrow.sol";
import {EscrowHashes} from "../../src/libraries/EscrowHashes.sol";
import {MockUSDC} from "../../src/mocks/MockUSDC.sol";
import {UptoEscrow} from "../../src/UptoEscrow.sol";
import {PullDepositCollector} from "../mocks/PullDepositCollector.sol";
import {Test} from "./Test.sol";
import {Vm, vm} from "./Vm.sol";

/// @notice Shared deployment, actors and signing helpers for the escrow tests.
abstract contract EscrowFixture is Test {
    uint256 internal constant PAYER_KEY = 0xA11CE;
    uint256 internal constant PAYER_AUTH_KEY = 0xB0B;
    uint256 internal constant RECEIVER_KEY = 0xCAFE;
    uint256 internal constant RECEIVER_AUTH_KEY = 0xD00D;
    uint256 internal constant STRANGER_KEY = 0xBAD;

    /// @dev secp256k1 group order; `n - s` flips a signature to its high-s twin.
    uint256 internal constant SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141;

    uint40 internal constant DELAY = 1 hours;
    uint128 internal constant DEPOSIT = 1000e6;

    UptoEscrow internal escrow;
    MockUSDC internal usdc;
    Erc3009DepositCollector internal erc3009Collector;
    PullDepositCollector internal pullCollector;

    address internal payer;
    address internal payerAuth;
    address internal receiver;
    address internal receiverAuth;
    address internal stranger;

    function setUp() public virtual {
        vm.warp(1_700_000_000);
        escrow = new UptoEscrow();
        usdc = new MockUSDC();
        erc3009Collector = new Erc3009DepositCollector(address(escrow));
        pullCollector = new PullDepositCollector();

        payer = vm.addr(PAYER_KEY);
        payerAuth = vm.addr(PAYER_AUTH_KEY);
        receiver = vm.addr(RECEIVER_KEY);
        receiverAuth = vm.addr(RECEIVER_AUTH_KEY);
        stranger = vm.addr(STRANGER_KEY);

        usdc.mint(payer, 1_000_000e6);
        vm.prank(payer);
        usdc.approve(address(pullCollector), type(uint256).max);
    }

    /*//////////////////////////////////////////////////////////////
                                CHANNELS
    //////////////////////////////////////////////////////////////*/

    function _config(bytes32 salt) internal view returns (IUptoEscrow.ChannelConfig memory) {
        return IUptoEscrow.ChannelConfig({
            payer: payer,
            payerAuthorizer: payerAuth,
            receiver: receiver,
            receiverAuthorizer: receiverAuth,
            token: address(usdc),
            withdrawDelay: DELAY,
            salt: salt
        });
    }

    function _config() internal view returns (IUptoEscrow.ChannelConfig memory) {
        return _config(bytes32(0));
    }

    /// @dev Deposits through the pull collector, funding `config.payer` first if needed.
    function _deposit(IUptoEscrow.ChannelConfig memory config, uint128 amount) internal returns (bytes32 channelId) {
        if (usdc.balanceOf(config.payer) < amount) usdc.mint(config.payer, amount);
        if (usdc.allowance(config.payer, address(pullCollector)) < amount) {
            vm.prank(config.payer);
            usdc.approve(address(pullCollector), type(uint256).max);
        }
        vm.prank(config.payer);
        escrow.deposit(config, amount, address(pullCollector), "");
        return escrow.getChannelId(config);
    }

    function _balance(bytes32 channelId) internal view returns (uint128 balance) {
        (balance,) = escrow.channels(channelId);
    }

    function _claimed(bytes32 channelId) internal view returns (uint128 totalClaimed) {
        (, totalClaimed) = escrow.channels(channelId);
    }

    /// @dev Number of `topic0` events the escrow emitted since `vm.recordLogs()` (consumes the recorded logs).
    function _escrowEvents(bytes32 topic0) internal returns (uint256 count) {
        Vm.Log[] memory logs = vm.getRecordedLogs();
        for (uint256 i; i < logs.length; ++i) {
            if (logs[i].emitter == address(escrow) && logs[i].topics[0] == topic0) ++count;
        }
    }

    /*//////////////////////////////////////////////////////////////
                               SIGNATURES
    //////////////////////////////////////////////////////////////*/

    function _sign(uint256 key, bytes32 digest) internal pure returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
        return abi.encodePacked(r, s, v);
    }

    /// @dev The same signature with s replaced by n - s and v flipped: `ecrecover` accepts it, OpenZeppelin does not.
    function _highS(bytes memory signature) internal pure returns (bytes memory) {
        bytes32 r;
        bytes32 s;
        uint8 v;
        assembly ("memory-safe") {
            r := mload(add(signature, 0x20))
            s := mload(add(signature, 0x40))
            v := byte(0, mload(add(signature, 0x60)))
        }
        return abi.encodePacked(r, bytes32(SECP256K1_N - uint256(s)), v == 27 ? uint8(28) : uint8(27));
    }

    function _domainSeparator(address verifyingContract, uint256 chainId) internal pure returns (bytes32) {
        return keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak256("x402 Batch Settlement"),
                keccak256("1"),
                chainId,
                verifyingContract
            )
        );
    }

    function _typedDataHash(bytes32 structHash) internal view returns (bytes32) {
        return keccak256(abi.encodePacked("\x19\x01", _domainSeparator(address(escrow), block.chainid), structHash));
    }

    /// @dev Voucher digest computed independently of the contract (plain abi.encode, not the assembly helpers).
    function _voucherDigest(bytes32 channelId, uint128 maxClaimableAmount) internal view returns (bytes32) {
        return _typedDataHash(keccak256(abi.encode(EscrowHashes.VOUCHER_TYPEHASH, channelId, maxClaimableAmount)));
    }

    function _signVoucher(uint256 key, bytes32 channelId, uint128 maxClaimableAmount)
        internal
        view
        returns (bytes memory)
    {
        return _sign(key, _voucherDigest(channelId, maxClaimableAmount));
    }

    function _row(IUptoEscrow.ChannelConfig memory config, uint128 maxClaimableAmount, uint128 totalClaimed)
        internal
        view
        returns (IUptoEscrow.VoucherClaim memory)
    {
        bytes32 channelId = escrow.getChannelId(config);
        return
            _row(config, maxClaimableAmount, totalClaimed, _signVoucher(PAYER_AUTH_KEY, channelId, maxClaimableAmount));
    }

    function _row(
        IUptoEscrow.ChannelConfig memory config,
        uint128 maxClaimableAmount,
        uint128 totalClaimed,
        bytes memory signature
    ) internal pure returns (IUptoEscrow.VoucherClaim memory) {
        return IUptoEscrow.VoucherClaim({
            voucher: IUptoEscrow.Voucher({channel: config, maxClaimableAmount: maxClaimableAmount}),
            signature: signature,
            totalClaimed: totalClaimed
        });
    }

    function _one(IUptoEscrow.VoucherClaim memory row) internal pure returns (IUptoEscrow.VoucherClaim[] memory rows) {
        rows = new IUptoEscrow.VoucherClaim[](1);
        rows[0] = row;
    }

    /// @dev ClaimBatch digest computed independently of the contract.
    function _claimBatchDigest(IUptoEscrow.VoucherClaim[] memory rows) internal view returns (bytes32) {
        bytes32[] memory entries = new bytes32[](rows.length);
        for (uint256 i; i < rows.length; ++i) {
            entries[i] = keccak256(
                abi.encode(
                    EscrowHashes.CLAIM_ENTRY_TYPEHASH,
                    escrow.getChannelId(rows[i].voucher.channel),
                    rows[i].voucher.maxClaimableAmount,
                    rows[i].totalClaimed
                )
            );
        }
        return
            _typedDataHash(
                keccak256(abi.encode(EscrowHashes.CLAIM_BATCH_TYPEHASH, keccak256(abi.encodePacked(entries))))
            );
    }

    function _signClaimBatch(uint256 key, IUptoEscrow.VoucherClaim[] memory rows) internal view returns (bytes memory) {
        return _sign(key, _claimBatchDigest(rows));
    }

    function _refundDigest(bytes32 channelId, uint256 nonce, uint128 amount) internal view returns (bytes32) {
        return _typedDataHash(keccak256(abi.encode(EscrowHashes.REFUND_TYPEHASH, channelId, nonce, amount)));
    }

    function _signRefund(uint256 key, bytes32 channelId, uint256 nonce, uint128 amount)
        internal
        view
        returns (bytes memory)
    {
        return _sign(key, _refundDigest(channelId, nonce, amount));
    }

    /// @dev collectorData for the ERC-3009 collector, signed by `key` for `config`'s channel.
    function _erc3009Data(uint256 key, IUptoEscrow.ChannelConfig memory config, uint256 amount, uint256 salt)
        internal
        view
        returns (bytes memory)
    {
        uint256 validAfter = block.timestamp - 1;
        uint256 validBefore = block.timestamp + 1 hours;
        bytes32 nonce = keccak256(abi.encode(escrow.getChannelId(config), salt));
        bytes32 structHash = keccak256(
            abi.encode(
                usdc.RECEIVE_WITH_AUTHORIZATION_TYPEHASH(),
                vm.addr(key),
                address(erc3009Collector),
                amount,
                validAfter,
                validBefore,
                nonce
            )
        );
        bytes32 digest = keccak256(abi.encodePacked("\x19\x01", usdc.DOMAIN_SEPARATOR(), structHash));
        return abi.encode(validAfter, validBefore, salt, _sign(key, digest));
    }
}
