// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {MockUSDC} from "../src/mocks/MockUSDC.sol";
import {MockERC1271Wallet} from "../src/mocks/MockERC1271Wallet.sol";
import {Test} from "./utils/Test.sol";
import {vm} from "./utils/Vm.sol";

/// @notice The mock token must behave like USDC where the x402 SDKs and the escrow rely on it: EIP-712 domain,
///         EIP-2612 permit and EIP-3009 authorizations with real signature checks.
contract MockUSDCTest is Test {
    uint256 internal constant OWNER_KEY = 0x0A11CE;
    uint256 internal constant OTHER_KEY = 0x0B0B;

    MockUSDC internal usdc;
    address internal owner;
    address internal other;
    address internal constant SPENDER = address(0x5BE);
    address internal constant PAYEE = address(0xBEEF);

    function setUp() public {
        vm.warp(1_700_000_000);
        usdc = new MockUSDC();
        owner = vm.addr(OWNER_KEY);
        other = vm.addr(OTHER_KEY);
        usdc.mint(owner, 1000e6);
    }

    function test_Metadata() public view {
        assertEq(usdc.name(), "USDC");
        assertEq(usdc.symbol(), "USDC");
        assertEq(usdc.decimals(), 6);
        (, string memory name, string memory version, uint256 chainId, address verifyingContract,,) =
            usdc.eip712Domain();
        assertEq(name, "USDC");
        assertEq(version, "2");
        assertEq(chainId, block.chainid);
        assertEq(verifyingContract, address(usdc));
        bytes32 expected = keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak256("USDC"),
                keccak256("2"),
                block.chainid,
                address(usdc)
            )
        );
        assertEq(usdc.DOMAIN_SEPARATOR(), expected);
    }

    function test_Typehashes() public view {
        assertEq(
            usdc.RECEIVE_WITH_AUTHORIZATION_TYPEHASH(),
            0xd099cc98ef71107a616c4f0f941f04c322d8e254fe26b3c6668db87aae413de8
        );
        assertEq(
            usdc.TRANSFER_WITH_AUTHORIZATION_TYPEHASH(),
            0x7c7c6cdb67a18743f49ec6fa9b35f50d52ed05cbed4cc592e13b44501c1a2267
        );
        assertEq(
            usdc.CANCEL_AUTHORIZATION_TYPEHASH(), keccak256("CancelAuthorization(address authorizer,bytes32 nonce)")
        );
        assertEq(
            usdc.PERMIT_TYPEHASH(),
            keccak256("Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)")
        );
    }

    /*//////////////////////////////////////////////////////////////
                                 PERMIT
    //////////////////////////////////////////////////////////////*/

    function test_Permit_SetsAllowance() public {
        (uint8 v, bytes32 r, bytes32 s) = _permitSig(OWNER_KEY, owner, 500e6, 0, block.timestamp);
        usdc.permit(owner, SPENDER, 500e6, block.timestamp, v, r, s);
        assertEq(usdc.allowance(owner, SPENDER), 500e6);
        assertEq(usdc.nonces(owner), 1);
    }

    function test_RevertWhen_PermitExpired() public {
        (uint8 v, bytes32 r, bytes32 s) = _permitSig(OWNER_KEY, owner, 500e6, 0, block.timestamp - 1);
        vm.expectRevert(abi.encodeWithSelector(MockUSDC.PermitExpired.selector, block.timestamp - 1));
        usdc.permit(owner, SPENDER, 500e6, block.timestamp - 1, v, r, s);
    }

    function test_RevertWhen_PermitWrongSigner() public {
        (uint8 v, bytes32 r, bytes32 s) = _permitSig(OTHER_KEY, owner, 500e6, 0, block.timestamp);
        vm.expectRevert(MockUSDC.InvalidPermitSignature.selector);
        usdc.permit(owner, SPENDER, 500e6, block.timestamp, v, r, s);
    }

    function test_RevertWhen_PermitReplayed() public {
        (uint8 v, bytes32 r, bytes32 s) = _permitSig(OWNER_KEY, owner, 500e6, 0, block.timestamp);
        usdc.permit(owner, SPENDER, 500e6, block.timestamp, v, r, s);
        vm.expectRevert(MockUSDC.InvalidPermitSignature.selector);
        usdc.permit(owner, SPENDER, 500e6, block.timestamp, v, r, s);
    }

    /*//////////////////////////////////////////////////////////////
                                EIP-3009
    //////////////////////////////////////////////////////////////*/

    function test_TransferWithAuthorization_AnyoneSubmits() public {
        bytes32 nonce = keccak256("n1");
        (uint8 v, bytes32 r, bytes32 s) =
            _authSig(usdc.TRANSFER_WITH_AUTHORIZATION_TYPEHASH(), OWNER_KEY, owner, PAYEE, 100e6, nonce);
        vm.prank(other);
        usdc.transferWithAuthorization(owner, PAYEE, 100e6, 0, block.timestamp + 1, nonce, v, r, s);
        assertEq(usdc.balanceOf(PAYEE), 100e6);
        assertTrue(usdc.authorizationState(owner, nonce));
    }

    function test_RevertWhen_TransferWithAuthorizationReplayed() public {
        bytes32 nonce = keccak256("n1");
        (uint8 v, bytes32 r, bytes32 s) =
            _authSig(usdc.TRANSFER_WITH_AUTHORIZATION_TYPEHASH(), OWNER_KEY, owner, PAYEE, 100e6, nonce);
        usdc.transferWithAuthorization(owner, PAYEE, 100e6, 0, block.timestamp + 1, nonce, v, r, s);
        vm.expectRevert(abi.encodeWithSelector(MockUSDC.AuthorizationAlreadyUsed.selector, owner, nonce));
        usdc.transferWithAuthorization(owner, PAYEE, 100e6, 0, block.timestamp + 1, nonce, v, r, s);
    }

    function test_RevertWhen_AuthorizationNotYetValid() public {
        bytes32 nonce = keccak256("n1");
        uint256 validAfter = block.timestamp;
        bytes32 digest = _authDigest(
            usdc.TRANSFER_WITH_AUTHORIZATION_TYPEHASH(), owner, PAYEE, 1, validAfter, block.timestamp + 1, nonce
        );
        bytes memory signature = _sign(OWNER_KEY, digest);
        vm.expectRevert(abi.encodeWithSelector(MockUSDC.AuthorizationNotYetValid.selector, validAfter));
        usdc.transferWithAuthorization(owner, PAYEE, 1, validAfter, block.timestamp + 1, nonce, signature);
    }

    /// @dev Receive and transfer authorizations use different type hashes: one cannot stand in for the other.
    function test_RevertWhen_TransferAuthorizationUsedAsReceive() public {
        bytes32 nonce = keccak256("n1");
        (uint8 v, bytes32 r, bytes32 s) =
            _authSig(usdc.TRANSFER_WITH_AUTHORIZATION_TYPEHASH(), OWNER_KEY, owner, PAYEE, 100e6, nonce);
        vm.prank(PAYEE);
        vm.expectRevert(MockUSDC.InvalidAuthorizationSignature.selector);
        usdc.receiveWithAuthorization(owner, PAYEE, 100e6, 0, block.timestamp + 1, nonce, v, r, s);
    }

    function test_ReceiveWithAuthorization_ByPayee() public {
        bytes32 nonce = keccak256("n2");
        (uint8 v, bytes32 r, bytes32 s) =
            _authSig(usdc.RECEIVE_WITH_AUTHORIZATION_TYPEHASH(), OWNER_KEY, owner, PAYEE, 100e6, nonce);
        vm.prank(PAYEE);
        usdc.receiveWithAuthorization(owner, PAYEE, 100e6, 0, block.timestamp + 1, nonce, v, r, s);
        assertEq(usdc.balanceOf(PAYEE), 100e6);
    }

    function test_RevertWhen_ReceiveWithAuthorizationByOther() public {
        bytes32 nonce = keccak256("n2");
        (uint8 v, bytes32 r, bytes32 s) =
            _authSig(usdc.RECEIVE_WITH_AUTHORIZATION_TYPEHASH(), OWNER_KEY, owner, PAYEE, 100e6, nonce);
        vm.prank(other);
        vm.expectRevert(abi.encodeWithSelector(MockUSDC.CallerMustBePayee.selector, other, PAYEE));
        usdc.receiveWithAuthorization(owner, PAYEE, 100e6, 0, block.timestamp + 1, nonce, v, r, s);
    }

    function test_ReceiveWithAuthorization_Erc1271Payer() public {
        MockERC1271Wallet wallet = new MockERC1271Wallet(owner);
        usdc.mint(address(wallet), 10e6);
        bytes32 nonce = keccak256("n3");
        bytes32 digest = _authDigest(
            usdc.RECEIVE_WITH_AUTHORIZATION_TYPEHASH(), address(wallet), PAYEE, 10e6, 0, block.timestamp + 1, nonce
        );
        bytes memory signature = _sign(OWNER_KEY, digest);
        vm.prank(PAYEE);
        usdc.receiveWithAuthorization(address(wallet), PAYEE, 10e6, 0, block.timestamp + 1, nonce, signature);
        assertEq(usdc.balanceOf(PAYEE), 10e6);
    }

    function test_CancelAuthorization_BlocksUse() public {
        bytes32 nonce = keccak256("n4");
        bytes32 cancelDigest = keccak256(
            abi.encodePacked(
                "\x19\x01",
                usdc.DOMAIN_SEPARATOR(),
                keccak256(abi.encode(usdc.CANCEL_AUTHORIZATION_TYPEHASH(), owner, nonce))
            )
        );
        (uint8 cv, bytes32 cr, bytes32 cs) = vm.sign(OWNER_KEY, cancelDigest);
        usdc.cancelAuthorization(owner, nonce, cv, cr, cs);
        assertTrue(usdc.authorizationState(owner, nonce));

        (uint8 v, bytes32 r, bytes32 s) =
            _authSig(usdc.TRANSFER_WITH_AUTHORIZATION_TYPEHASH(), OWNER_KEY, owner, PAYEE, 1, nonce);
        vm.expectRevert(abi.encodeWithSelector(MockUSDC.AuthorizationAlreadyUsed.selector, owner, nonce));
        usdc.transferWithAuthorization(owner, PAYEE, 1, 0, block.timestamp + 1, nonce, v, r, s);
        vm.expectRevert(abi.encodeWithSelector(MockUSDC.AuthorizationAlreadyUsed.selector, owner, nonce));
        usdc.cancelAuthorization(owner, nonce, cv, cr, cs);
    }

    function test_RevertWhen_CancelAuthorizationWrongSigner() public {
        bytes32 nonce = keccak256("n5");
        bytes32 cancelDigest = keccak256(
            abi.encodePacked(
                "\x19\x01",
                usdc.DOMAIN_SEPARATOR(),
                keccak256(abi.encode(usdc.CANCEL_AUTHORIZATION_TYPEHASH(), owner, nonce))
            )
        );
        bytes memory signature = _sign(OTHER_KEY, cancelDigest);
        vm.expectRevert(MockUSDC.InvalidAuthorizationSignature.selector);
        usdc.cancelAuthorization(owner, nonce, signature);
    }

    /*//////////////////////////////////////////////////////////////
                                 HELPERS
    //////////////////////////////////////////////////////////////*/

    function _sign(uint256 key, bytes32 digest) internal pure returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
        return abi.encodePacked(r, s, v);
    }

    function _permitSig(uint256 key, address holder, uint256 value, uint256 nonce, uint256 deadline)
        internal
        view
        returns (uint8, bytes32, bytes32)
    {
        bytes32 structHash = keccak256(abi.encode(usdc.PERMIT_TYPEHASH(), holder, SPENDER, value, nonce, deadline));
        return vm.sign(key, keccak256(abi.encodePacked("\x19\x01", usdc.DOMAIN_SEPARATOR(), structHash)));
    }

    function _authDigest(
        bytes32 typehash,
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce
    ) internal view returns (bytes32) {
        bytes32 structHash = keccak256(abi.encode(typehash, from, to, value, validAfter, validBefore, nonce));
        return keccak256(abi.encodePacked("\x19\x01", usdc.DOMAIN_SEPARATOR(), structHash));
    }

    function _authSig(bytes32 typehash, uint256 key, address from, address to, uint256 value, bytes32 nonce)
        internal
        view
        returns (uint8, bytes32, bytes32)
    {
        return vm.sign(key, _authDigest(typehash, from, to, value, 0, block.timestamp + 1, nonce));
    }
}
