// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

import {IDepositCollector} from "../../src/interfaces/IDepositCollector.sol";

/// @notice TEST ONLY. Pulls a plain ERC-20 approval. Unsafe in production: anyone could deposit an approving payer's
///         funds into a channel whose voucher signer they control. Used to measure deposit gas without signatures
///         and to drive the invariant handler.
contract PullDepositCollector is IDepositCollector {
    function collect(address payer, address token, uint256 amount, bytes32, bytes calldata) external {
        require(IERC20(token).transferFrom(payer, msg.sender, amount), "transferFrom failed");
    }
}
