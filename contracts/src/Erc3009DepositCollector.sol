// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";

import {IDepositCollector} from "./interfaces/IDepositCollector.sol";
import {IERC3009} from "./interfaces/IERC3009.sol";

/// @title Erc3009DepositCollector
/// @notice Gasless deposits: the payer signs an EIP-3009 `ReceiveWithAuthorization` to this collector, a facilitator
///         calls `UptoEscrow.deposit`, and the escrow calls `collect`, which pulls the funds and forwards them.
/// @dev `receiveWithAuthorization` only pays its caller, so the tokens transit through this contract. The
///      authorization nonce is `keccak256(abi.encode(channelId, salt))`: a signature funds exactly one channel, and
///      only the escrow may call `collect`, so nobody can spend a payer's authorization elsewhere.
///      `collectorData` is `abi.encode(uint256 validAfter, uint256 validBefore, uint256 salt, bytes signature)`,
///      as for x402's ERC3009DepositCollector.
contract Erc3009DepositCollector is IDepositCollector {
    using SafeERC20 for IERC20;

    /// @notice The only contract allowed to call `collect`, and the recipient of collected funds.
    address public immutable escrow;

    /// @notice `collect` was called by something other than `escrow`.
    /// @param caller The unauthorized caller.
    error OnlyEscrow(address caller);

    /// @notice The constructor was given the zero address.
    error ZeroEscrow();

    /// @param escrow_ The escrow this collector serves.
    constructor(address escrow_) {
        if (escrow_ == address(0)) revert ZeroEscrow();
        escrow = escrow_;
    }

    /// @inheritdoc IDepositCollector
    function collect(address payer, address token, uint256 amount, bytes32 channelId, bytes calldata collectorData)
        external
    {
        if (msg.sender != escrow) revert OnlyEscrow(msg.sender);
        (uint256 validAfter, uint256 validBefore, uint256 salt, bytes memory signature) =
            abi.decode(collectorData, (uint256, uint256, uint256, bytes));
        bytes32 nonce = keccak256(abi.encode(channelId, salt));
        IERC3009(token)
            .receiveWithAuthorization(payer, address(this), amount, validAfter, validBefore, nonce, signature);
        IERC20(token).safeTransfer(msg.sender, amount);
    }
}
