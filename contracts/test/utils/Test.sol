// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {vm} from "./Vm.sol";

/// @title console
/// @notice Minimal `console.log` (Foundry prints these calls with `-vv` and above).
library console {
    address private constant CONSOLE = 0x000000000000000000636F6e736F6c652e6c6f67;

    function log(string memory message) internal view {
        _send(abi.encodeWithSignature("log(string)", message));
    }

    function log(string memory label, uint256 value) internal view {
        _send(abi.encodeWithSignature("log(string,uint256)", label, value));
    }

    function _send(bytes memory payload) private view {
        // The console address has no code: the call always succeeds and Foundry decodes it from the trace.
        (bool ok,) = CONSOLE.staticcall(payload);
        ok;
    }
}

/// @title Test
/// @notice Tiny replacement for forge-std's Test: assertions that revert with a readable message, `bound`, and the
///         invariant-target getters Foundry reads (same names and ABI as forge-std's StdInvariant).
abstract contract Test {
    struct FuzzSelector {
        address addr;
        bytes4[] selectors;
    }

    bool public IS_TEST = true;

    address[] private _targetContracts;
    address[] private _targetSenders;
    FuzzSelector[] private _targetSelectors;

    /*//////////////////////////////////////////////////////////////
                               ASSERTIONS
    //////////////////////////////////////////////////////////////*/

    function fail(string memory message) internal pure {
        revert(message);
    }

    function assertTrue(bool condition, string memory message) internal pure {
        if (!condition) fail(string.concat("assertTrue failed: ", message));
    }

    function assertTrue(bool condition) internal pure {
        assertTrue(condition, "");
    }

    function assertFalse(bool condition, string memory message) internal pure {
        if (condition) fail(string.concat("assertFalse failed: ", message));
    }

    function assertFalse(bool condition) internal pure {
        assertFalse(condition, "");
    }

    function assertEq(uint256 a, uint256 b, string memory message) internal pure {
        if (a != b) fail(string.concat("assertEq failed: ", vm.toString(a), " != ", vm.toString(b), " ", message));
    }

    function assertEq(uint256 a, uint256 b) internal pure {
        assertEq(a, b, "");
    }

    function assertEq(address a, address b, string memory message) internal pure {
        if (a != b) fail(string.concat("assertEq failed: ", vm.toString(a), " != ", vm.toString(b), " ", message));
    }

    function assertEq(address a, address b) internal pure {
        assertEq(a, b, "");
    }

    function assertEq(bytes32 a, bytes32 b, string memory message) internal pure {
        if (a != b) fail(string.concat("assertEq failed: ", vm.toString(a), " != ", vm.toString(b), " ", message));
    }

    function assertEq(bytes32 a, bytes32 b) internal pure {
        assertEq(a, b, "");
    }

    function assertEq(bool a, bool b, string memory message) internal pure {
        if (a != b) fail(string.concat("assertEq(bool) failed: ", message));
    }

    function assertEq(bool a, bool b) internal pure {
        assertEq(a, b, "");
    }

    function assertEq(bytes memory a, bytes memory b, string memory message) internal pure {
        if (keccak256(a) != keccak256(b)) {
            fail(string.concat("assertEq failed: ", vm.toString(a), " != ", vm.toString(b), " ", message));
        }
    }

    function assertEq(bytes memory a, bytes memory b) internal pure {
        assertEq(a, b, "");
    }

    function assertEq(string memory a, string memory b, string memory message) internal pure {
        if (keccak256(bytes(a)) != keccak256(bytes(b))) {
            fail(string.concat("assertEq failed: \"", a, "\" != \"", b, "\" ", message));
        }
    }

    function assertEq(string memory a, string memory b) internal pure {
        assertEq(a, b, "");
    }

    function assertLe(uint256 a, uint256 b, string memory message) internal pure {
        if (a > b) fail(string.concat("assertLe failed: ", vm.toString(a), " > ", vm.toString(b), " ", message));
    }

    function assertLe(uint256 a, uint256 b) internal pure {
        assertLe(a, b, "");
    }

    function assertGe(uint256 a, uint256 b, string memory message) internal pure {
        if (a < b) fail(string.concat("assertGe failed: ", vm.toString(a), " < ", vm.toString(b), " ", message));
    }

    function assertGe(uint256 a, uint256 b) internal pure {
        assertGe(a, b, "");
    }

    function assertLt(uint256 a, uint256 b, string memory message) internal pure {
        if (a >= b) fail(string.concat("assertLt failed: ", vm.toString(a), " >= ", vm.toString(b), " ", message));
    }

    function assertLt(uint256 a, uint256 b) internal pure {
        assertLt(a, b, "");
    }

    /*//////////////////////////////////////////////////////////////
                                 FUZZING
    //////////////////////////////////////////////////////////////*/

    /// @dev Maps any `x` into [min, max] without rejecting runs; values already inside are kept as they are, so
    ///      the fuzzer's edge cases (0, max) land on the range's edges.
    function bound(uint256 x, uint256 min, uint256 max) internal pure returns (uint256) {
        require(min <= max, "bound: min > max");
        if (x >= min && x <= max) return x;
        uint256 size = max - min;
        if (size == type(uint256).max) return x;
        return min + (x % (size + 1));
    }

    function targetContract(address target) internal {
        _targetContracts.push(target);
    }

    function targetSender(address sender) internal {
        _targetSenders.push(sender);
    }

    function targetSelector(FuzzSelector memory selector) internal {
        _targetSelectors.push(selector);
    }

    /// @notice Read by Foundry's invariant runner: the contracts whose functions it calls.
    function targetContracts() public view returns (address[] memory) {
        return _targetContracts;
    }

    /// @notice Read by Foundry's invariant runner: the senders it uses (all fuzzed addresses when empty).
    function targetSenders() public view returns (address[] memory) {
        return _targetSenders;
    }

    /// @notice Read by Foundry's invariant runner: which functions of the targets it may call.
    function targetSelectors() public view returns (FuzzSelector[] memory) {
        return _targetSelectors;
    }
}
