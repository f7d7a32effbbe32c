// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

import {IDepositCollector} from "../../src/interfaces/IDepositCollector.sol";

/// @notice TEST ONLY. A collector that sends a configurable amount from its own balance, or calls back into the
///         escrow, to exercise the escrow's receipt check and reentrancy guard.
contract MisbehavingCollector is IDepositCollector {
    uint256 public sendAmount;
    address public reenterTarget;
    bytes public reenterCall;

    function setSendAmount(uint256 amount) external {
        sendAmount = amount;
    }

    function setReentry(address target, bytes calldata data) external {
        reenterTarget = target;
        reenterCall = data;
    }

    function collect(address, address token, uint256, bytes32, bytes calldata) external {
        if (reenterTarget != address(0)) {
            (bool ok, bytes memory reason) = reenterTarget.call(reenterCall);
            if (!ok) {
                assembly ("memory-safe") {
                    revert(add(reason, 0x20), mload(reason))
                }
            }
        }
        if (sendAmount != 0) require(IERC20(token).transfer(msg.sender, sendAmount), "transfer failed");
    }
}
