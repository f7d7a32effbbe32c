// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title IDepositCollector
/// @notice Pulls a deposit from a payer into the escrow that calls it.
/// @dev The escrow credits the channel only if its own token balance grew by exactly `amount` during `collect`,
///      so a collector must transfer the full amount to `msg.sender` and nothing else. Same ABI as x402's
///      `IDepositCollector`, so collectors written for x402BatchSettlement plug in unchanged.
interface IDepositCollector {
    /// @notice Moves `amount` of `token` from `payer` to the calling escrow.
    /// @param payer The owner of the tokens (the channel's payer).
    /// @param token The ERC-20 being deposited.
    /// @param amount The exact amount the escrow expects to receive.
    /// @param channelId The channel being funded; collectors bind their authorization to it.
    /// @param collectorData Collector-specific encoding (signatures, validity window, salt, ...).
    function collect(address payer, address token, uint256 amount, bytes32 channelId, bytes calldata collectorData)
        external;
}
