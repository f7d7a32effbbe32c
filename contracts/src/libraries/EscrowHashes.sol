// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IUptoEscrow} from "../interfaces/IUptoEscrow.sol";

/// @title EscrowHashes
/// @notice EIP-712 type hashes and struct hashing for the escrow, shared by the contract and its tests.
/// @dev Hashing is done in scratch memory above the free memory pointer without moving it, so a claim loop over
///      hundreds of rows does not grow memory. Small integer arguments are masked before hashing: Solidity does not
///      promise clean high bits for them inside assembly.
library EscrowHashes {
    /// @dev keccak256("ChannelConfig(address payer,address payerAuthorizer,address receiver,address
    ///      receiverAuthorizer,address token,uint40 withdrawDelay,bytes32 salt)")
    bytes32 internal constant CHANNEL_CONFIG_TYPEHASH = keccak256(
        "ChannelConfig(address payer,address payerAuthorizer,address receiver,address receiverAuthorizer,address token,uint40 withdrawDelay,bytes32 salt)"
    );

    /// @dev keccak256("Voucher(bytes32 channelId,uint128 maxClaimableAmount)")
    bytes32 internal constant VOUCHER_TYPEHASH = keccak256("Voucher(bytes32 channelId,uint128 maxClaimableAmount)");

    /// @dev keccak256("Refund(bytes32 channelId,uint256 nonce,uint128 amount)")
    bytes32 internal constant REFUND_TYPEHASH = keccak256("Refund(bytes32 channelId,uint256 nonce,uint128 amount)");

    /// @dev keccak256("ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)")
    bytes32 internal constant CLAIM_ENTRY_TYPEHASH =
        keccak256("ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)");

    /// @dev keccak256("ClaimBatch(ClaimEntry[] claims)ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,
    ///      uint128 totalClaimed)"): the referenced type is appended, as EIP-712 requires for nested structs.
    bytes32 internal constant CLAIM_BATCH_TYPEHASH = keccak256(
        "ClaimBatch(ClaimEntry[] claims)ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)"
    );

    uint256 private constant UINT128_MASK = 0xffffffffffffffffffffffffffffffff;

    /// @notice EIP-712 struct hash of a `ChannelConfig` read straight from calldata.
    /// @dev Reverts (without data, like Solidity's ABI decoder) when an address or the uint40 carries dirty high
    ///      bits: otherwise one logical config could be given several ids.
    function hashConfig(IUptoEscrow.ChannelConfig calldata config) internal pure returns (bytes32 structHash) {
        bytes32 typehash = CHANNEL_CONFIG_TYPEHASH;
        assembly ("memory-safe") {
            let m := mload(0x40)
            mstore(m, typehash)
            calldatacopy(add(m, 0x20), config, 0xe0)
            let dirty := or(shr(160, mload(add(m, 0x20))), shr(160, mload(add(m, 0x40))))
            dirty := or(dirty, or(shr(160, mload(add(m, 0x60))), shr(160, mload(add(m, 0x80)))))
            dirty := or(dirty, or(shr(160, mload(add(m, 0xa0))), shr(40, mload(add(m, 0xc0)))))
            if dirty { revert(0, 0) }
            structHash := keccak256(m, 0x100)
        }
    }

    /// @notice EIP-712 struct hash of `Voucher(channelId, maxClaimableAmount)`.
    function hashVoucher(bytes32 channelId, uint128 maxClaimableAmount) internal pure returns (bytes32 structHash) {
        bytes32 typehash = VOUCHER_TYPEHASH;
        assembly ("memory-safe") {
            let m := mload(0x40)
            mstore(m, typehash)
            mstore(add(m, 0x20), channelId)
            mstore(add(m, 0x40), and(maxClaimableAmount, UINT128_MASK))
            structHash := keccak256(m, 0x60)
        }
    }

    /// @notice EIP-712 struct hash of `Refund(channelId, nonce, amount)`.
    function hashRefund(bytes32 channelId, uint256 nonce, uint128 amount) internal pure returns (bytes32 structHash) {
        bytes32 typehash = REFUND_TYPEHASH;
        assembly ("memory-safe") {
            let m := mload(0x40)
            mstore(m, typehash)
            mstore(add(m, 0x20), channelId)
            mstore(add(m, 0x40), nonce)
            mstore(add(m, 0x60), and(amount, UINT128_MASK))
            structHash := keccak256(m, 0x80)
        }
    }

    /// @notice EIP-712 struct hash of `ClaimEntry(channelId, maxClaimableAmount, totalClaimed)`.
    function hashClaimEntry(bytes32 channelId, uint128 maxClaimableAmount, uint128 totalClaimed)
        internal
        pure
        returns (bytes32 structHash)
    {
        bytes32 typehash = CLAIM_ENTRY_TYPEHASH;
        assembly ("memory-safe") {
            let m := mload(0x40)
            mstore(m, typehash)
            mstore(add(m, 0x20), channelId)
            mstore(add(m, 0x40), and(maxClaimableAmount, UINT128_MASK))
            mstore(add(m, 0x60), and(totalClaimed, UINT128_MASK))
            structHash := keccak256(m, 0x80)
        }
    }

    /// @notice EIP-712 struct hash of a `ClaimBatch` given its entries' struct hashes in order: an array member is
    ///         encoded as the keccak256 of its elements' hashes concatenated.
    function hashClaimBatch(bytes32[] memory entryHashes) internal pure returns (bytes32 structHash) {
        bytes32 typehash = CLAIM_BATCH_TYPEHASH;
        assembly ("memory-safe") {
            let entries := keccak256(add(entryHashes, 0x20), shl(5, mload(entryHashes)))
            mstore(0x00, typehash)
            mstore(0x20, entries)
            structHash := keccak256(0x00, 0x40)
        }
    }

    /// @notice `keccak256("\x19\x01" ‖ domainSeparator ‖ structHash)`, the EIP-712 typed-data hash.
    function typedDataHash(bytes32 domainSeparator, bytes32 structHash) internal pure returns (bytes32 digest) {
        assembly ("memory-safe") {
            let m := mload(0x40)
            mstore(m, hex"1901")
            mstore(add(m, 0x02), domainSeparator)
            mstore(add(m, 0x22), structHash)
            digest := keccak256(m, 0x42)
        }
    }
}
