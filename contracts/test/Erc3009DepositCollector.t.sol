// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {Erc3009DepositCollector} from "../src/Erc3009DepositCollector.sol";
import {IUptoEscrow} from "../src/interfaces/IUptoEscrow.sol";
import {MockUSDC} from "../src/mocks/MockUSDC.sol";
import {EscrowFixture} from "./utils/EscrowFixture.sol";
import {vm} from "./utils/Vm.sol";

/// @notice Gasless deposits through EIP-3009 `receiveWithAuthorization`, relayed by a facilitator.
contract Erc3009DepositCollectorTest is EscrowFixture {
    IUptoEscrow.ChannelConfig internal config;
    bytes32 internal channelId;
    uint256 internal payerStart;

    function setUp() public override {
        super.setUp();
        config = _config();
        channelId = escrow.getChannelId(config);
        payerStart = usdc.balanceOf(payer);
    }

    function test_Deposit_FundsChannelFromSignature() public {
        bytes memory data = _erc3009Data(PAYER_KEY, config, DEPOSIT, 1);
        vm.expectEmit(true, true, true, true, address(escrow));
        emit IUptoEscrow.Deposited(channelId, stranger, DEPOSIT, DEPOSIT);
        vm.prank(stranger);
        escrow.deposit(config, DEPOSIT, address(erc3009Collector), data);

        assertEq(_balance(channelId), DEPOSIT);
        assertEq(usdc.balanceOf(payer), payerStart - DEPOSIT);
        assertEq(usdc.balanceOf(address(escrow)), DEPOSIT);
        assertEq(usdc.balanceOf(address(erc3009Collector)), 0, "collector keeps nothing");
        assertTrue(usdc.authorizationState(payer, keccak256(abi.encode(channelId, uint256(1)))), "nonce consumed");
    }

    function test_Deposit_TopUpWithNewSalt() public {
        bytes memory first = _erc3009Data(PAYER_KEY, config, DEPOSIT, 1);
        bytes memory second = _erc3009Data(PAYER_KEY, config, 5e6, 2);
        escrow.deposit(config, DEPOSIT, address(erc3009Collector), first);
        escrow.deposit(config, 5e6, address(erc3009Collector), second);
        assertEq(_balance(channelId), DEPOSIT + 5e6);
    }

    function test_Constructor_StoresEscrow() public view {
        assertEq(erc3009Collector.escrow(), address(escrow));
    }

    function test_RevertWhen_ConstructedWithZeroEscrow() public {
        vm.expectRevert(Erc3009DepositCollector.ZeroEscrow.selector);
        new Erc3009DepositCollector(address(0));
    }

    function test_RevertWhen_CollectNotCalledByEscrow() public {
        bytes memory data = _erc3009Data(PAYER_KEY, config, DEPOSIT, 1);
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(Erc3009DepositCollector.OnlyEscrow.selector, stranger));
        erc3009Collector.collect(payer, address(usdc), DEPOSIT, channelId, data);
    }

    /// @dev The nonce binds the authorization to one channel: it cannot fund another channel of the same payer.
    function test_RevertWhen_AuthorizationUsedForOtherChannel() public {
        bytes memory data = _erc3009Data(PAYER_KEY, config, DEPOSIT, 1);
        IUptoEscrow.ChannelConfig memory other = _config(bytes32(uint256(1)));
        other.receiver = stranger;
        vm.expectRevert(MockUSDC.InvalidAuthorizationSignature.selector);
        escrow.deposit(other, DEPOSIT, address(erc3009Collector), data);
    }

    function test_RevertWhen_AuthorizationReplayed() public {
        bytes memory data = _erc3009Data(PAYER_KEY, config, DEPOSIT, 1);
        escrow.deposit(config, DEPOSIT, address(erc3009Collector), data);
        bytes32 nonce = keccak256(abi.encode(channelId, uint256(1)));
        vm.expectRevert(abi.encodeWithSelector(MockUSDC.AuthorizationAlreadyUsed.selector, payer, nonce));
        escrow.deposit(config, DEPOSIT, address(erc3009Collector), data);
    }

    function test_RevertWhen_AmountDiffersFromAuthorization() public {
        bytes memory data = _erc3009Data(PAYER_KEY, config, DEPOSIT, 1);
        vm.expectRevert(MockUSDC.InvalidAuthorizationSignature.selector);
        escrow.deposit(config, DEPOSIT + 1, address(erc3009Collector), data);
    }

    function test_RevertWhen_SignedByStranger() public {
        bytes memory data = _erc3009Data(STRANGER_KEY, config, DEPOSIT, 1);
        vm.expectRevert(MockUSDC.InvalidAuthorizationSignature.selector);
        escrow.deposit(config, DEPOSIT, address(erc3009Collector), data);
    }

    function test_RevertWhen_AuthorizationExpired() public {
        bytes memory data = _erc3009Data(PAYER_KEY, config, DEPOSIT, 1);
        (, uint256 validBefore,,) = abi.decode(data, (uint256, uint256, uint256, bytes));
        vm.warp(validBefore);
        vm.expectRevert(abi.encodeWithSelector(MockUSDC.AuthorizationExpired.selector, validBefore));
        escrow.deposit(config, DEPOSIT, address(erc3009Collector), data);
    }

    /// @dev A front-runner cannot take the payer's authorization and call the token directly: only the collector
    ///      (the payee) may submit a ReceiveWithAuthorization.
    function test_RevertWhen_AuthorizationSubmittedToTokenByOthers() public {
        bytes memory data = _erc3009Data(PAYER_KEY, config, DEPOSIT, 1);
        (uint256 validAfter, uint256 validBefore, uint256 salt, bytes memory signature) =
            abi.decode(data, (uint256, uint256, uint256, bytes));
        bytes32 nonce = keccak256(abi.encode(channelId, salt));
        vm.prank(stranger);
        vm.expectRevert(
            abi.encodeWithSelector(MockUSDC.CallerMustBePayee.selector, stranger, address(erc3009Collector))
        );
        usdc.receiveWithAuthorization(
            payer, address(erc3009Collector), DEPOSIT, validAfter, validBefore, nonce, signature
        );
    }

    function test_RevertWhen_AuthorizationCancelled() public {
        bytes memory data = _erc3009Data(PAYER_KEY, config, DEPOSIT, 1);
        bytes32 nonce = keccak256(abi.encode(channelId, uint256(1)));
        bytes32 digest = keccak256(
            abi.encodePacked(
                "\x19\x01",
                usdc.DOMAIN_SEPARATOR(),
                keccak256(abi.encode(usdc.CANCEL_AUTHORIZATION_TYPEHASH(), payer, nonce))
            )
        );
        usdc.cancelAuthorization(payer, nonce, _sign(PAYER_KEY, digest));
        vm.expectRevert(abi.encodeWithSelector(MockUSDC.AuthorizationAlreadyUsed.selector, payer, nonce));
        escrow.deposit(config, DEPOSIT, address(erc3009Collector), data);
    }
}
