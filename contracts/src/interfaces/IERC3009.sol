// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title IERC3009
/// @notice The part of EIP-3009 (USDC's "transfer with authorization") the deposit collector needs.
interface IERC3009 {
    /// @notice Transfers `value` from `from` to `to` with `from`'s signed `ReceiveWithAuthorization`.
    /// @dev Reverts unless `msg.sender == to`, which stops front-runners from redirecting the transfer.
    /// @param from The payer who signed the authorization.
    /// @param to The payee; must be the caller.
    /// @param value The amount to transfer.
    /// @param validAfter The authorization is valid strictly after this unix time.
    /// @param validBefore The authorization is valid strictly before this unix time.
    /// @param nonce A 32-byte value the payer picks; each nonce can be used once per payer.
    /// @param signature The payer's signature (65-byte ECDSA, or ERC-1271 data for contract wallets).
    function receiveWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        bytes calldata signature
    ) external;
}
