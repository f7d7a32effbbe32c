// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC1271} from "@openzeppelin/contracts/interfaces/IERC1271.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

/// @notice TEST ONLY. A smart wallet that accepts hashes signed by its owner key (ERC-1271), and can be switched
///         off to model a revoked or rotated key.
contract MockERC1271Wallet is IERC1271 {
    address public immutable owner;
    bool public enabled = true;

    constructor(address owner_) {
        owner = owner_;
    }

    function setEnabled(bool on) external {
        enabled = on;
    }

    function isValidSignature(bytes32 hash, bytes calldata signature) external view returns (bytes4) {
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecoverCalldata(hash, signature);
        if (enabled && err == ECDSA.RecoverError.NoError && signer == owner) return IERC1271.isValidSignature.selector;
        return 0xffffffff;
    }
}
