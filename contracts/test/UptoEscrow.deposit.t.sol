// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

import {IUptoEscrow} from "../src/interfaces/IUptoEscrow.sol";
import {EscrowHashes} from "../src/libraries/EscrowHashes.sol";
import {UptoEscrow} from "../src/UptoEscrow.sol";
import {FeeOnTransferToken} from "./mocks/FeeOnTransferToken.sol";
import {MisbehavingCollector} from "./mocks/MisbehavingCollector.sol";
import {EscrowFixture} from "./utils/EscrowFixture.sol";
import {vm} from "./utils/Vm.sol";

/// @notice Deposits, channel identity and the contract's constants.
contract UptoEscrowDepositTest is EscrowFixture {
    MisbehavingCollector internal badCollector;

    function setUp() public override {
        super.setUp();
        badCollector = new MisbehavingCollector();
        usdc.mint(address(badCollector), 10_000e6);
    }

    /*//////////////////////////////////////////////////////////////
                                CONSTANTS
    //////////////////////////////////////////////////////////////*/

    function test_Constants() public view {
        assertEq(escrow.MIN_WITHDRAW_DELAY(), 900);
        assertEq(escrow.MAX_WITHDRAW_DELAY(), 2_592_000);
        assertEq(escrow.CHANNEL_CONFIG_TYPEHASH(), EscrowHashes.CHANNEL_CONFIG_TYPEHASH);
        assertEq(escrow.VOUCHER_TYPEHASH(), EscrowHashes.VOUCHER_TYPEHASH);
        assertEq(escrow.REFUND_TYPEHASH(), EscrowHashes.REFUND_TYPEHASH);
        assertEq(escrow.CLAIM_ENTRY_TYPEHASH(), EscrowHashes.CLAIM_ENTRY_TYPEHASH);
        assertEq(escrow.CLAIM_BATCH_TYPEHASH(), EscrowHashes.CLAIM_BATCH_TYPEHASH);
    }

    function test_Eip712Domain() public view {
        (bytes1 fields, string memory name, string memory version, uint256 chainId, address verifyingContract,,) =
            escrow.eip712Domain();
        assertEq(uint8(fields), 0x0f, "name, version, chainId, verifyingContract");
        assertEq(name, "x402 Batch Settlement");
        assertEq(version, "1");
        assertEq(chainId, block.chainid);
        assertEq(verifyingContract, address(escrow));
    }

    function test_GetChannelId_IsTypedDataHashOfConfig() public view {
        IUptoEscrow.ChannelConfig memory config = _config(bytes32(uint256(7)));
        bytes32 structHash = keccak256(abi.encode(EscrowHashes.CHANNEL_CONFIG_TYPEHASH, config));
        assertEq(escrow.getChannelId(config), _typedDataHash(structHash));
    }

    function test_GetChannelId_DependsOnEveryField() public view {
        IUptoEscrow.ChannelConfig memory config = _config();
        bytes32 id = escrow.getChannelId(config);
        IUptoEscrow.ChannelConfig memory other = _config();
        other.salt = bytes32(uint256(1));
        assertTrue(escrow.getChannelId(other) != id, "salt");
        other = _config();
        other.withdrawDelay = DELAY + 1;
        assertTrue(escrow.getChannelId(other) != id, "withdrawDelay");
        other = _config();
        other.payerAuthorizer = address(0);
        assertTrue(escrow.getChannelId(other) != id, "payerAuthorizer");
        other = _config();
        other.receiver = stranger;
        assertTrue(escrow.getChannelId(other) != id, "receiver");
    }

    /// @dev Runtime code installed elsewhere (anvil_setCode to x402's canonical address, as the interop harness
    ///      does) must sign and verify under the address it runs at, not the one it was deployed at.
    function test_RuntimeCodeAtAnotherAddressUsesThatDomain() public {
        address elsewhere = 0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003;
        vm.etch(elsewhere, address(escrow).code);
        UptoEscrow moved = UptoEscrow(elsewhere);
        (, string memory name, string memory version, uint256 chainId, address verifyingContract,,) =
            moved.eip712Domain();
        assertEq(name, "x402 Batch Settlement");
        assertEq(version, "1");
        assertEq(chainId, block.chainid);
        assertEq(verifyingContract, elsewhere);

        IUptoEscrow.ChannelConfig memory config = _config();
        bytes32 structHash = keccak256(abi.encode(EscrowHashes.CHANNEL_CONFIG_TYPEHASH, config));
        bytes32 channelId =
            keccak256(abi.encodePacked("\x19\x01", _domainSeparator(elsewhere, block.chainid), structHash));
        assertEq(moved.getChannelId(config), channelId);

        vm.prank(payer);
        moved.deposit(config, DEPOSIT, address(pullCollector), "");
        bytes32 voucherDigest = keccak256(
            abi.encodePacked(
                "\x19\x01",
                _domainSeparator(elsewhere, block.chainid),
                keccak256(abi.encode(EscrowHashes.VOUCHER_TYPEHASH, channelId, uint128(5e6)))
            )
        );
        IUptoEscrow.VoucherClaim[] memory rows = _one(_row(config, 5e6, 5e6, _sign(PAYER_AUTH_KEY, voucherDigest)));
        vm.prank(receiverAuth);
        moved.claim(rows);
        (, uint128 claimed) = moved.channels(channelId);
        assertEq(claimed, 5e6);
    }

    /// @dev One logical config must have one id: an address word with dirty high bits is rejected, not hashed.
    function test_RevertWhen_ConfigEncodingIsNotCanonical() public view {
        bytes memory data = abi.encodeCall(escrow.getChannelId, (_config()));
        (bool ok,) = address(escrow).staticcall(data);
        assertTrue(ok, "canonical encoding accepted");
        // Word 0 after the selector is `payer`; set a bit above the 160 address bits.
        data[4] = 0x01;
        (ok,) = address(escrow).staticcall(data);
        assertFalse(ok, "dirty payer word rejected");
        data = abi.encodeCall(escrow.getChannelId, (_config()));
        // Word 5 is the uint40 `withdrawDelay`.
        data[4 + 5 * 32 + 26] = 0x01;
        (ok,) = address(escrow).staticcall(data);
        assertFalse(ok, "dirty withdrawDelay word rejected");
    }

    /*//////////////////////////////////////////////////////////////
                                 DEPOSIT
    //////////////////////////////////////////////////////////////*/

    function test_Deposit_OpensChannel() public {
        IUptoEscrow.ChannelConfig memory config = _config();
        bytes32 channelId = escrow.getChannelId(config);

        vm.expectEmit(true, true, true, true, address(escrow));
        emit IUptoEscrow.ChannelCreated(channelId, config);
        vm.expectEmit(true, true, true, true, address(escrow));
        emit IUptoEscrow.Deposited(channelId, payer, DEPOSIT, DEPOSIT);
        vm.prank(payer);
        escrow.deposit(config, DEPOSIT, address(pullCollector), "");

        (uint128 balance, uint128 claimed) = escrow.channels(channelId);
        assertEq(balance, DEPOSIT);
        assertEq(claimed, 0);
        assertEq(usdc.balanceOf(address(escrow)), DEPOSIT);
        assertEq(usdc.balanceOf(payer), 1_000_000e6 - DEPOSIT);
    }

    function test_Deposit_TopUpDoesNotRecreate() public {
        IUptoEscrow.ChannelConfig memory config = _config();
        bytes32 channelId = _deposit(config, DEPOSIT);

        vm.recordLogs();
        vm.prank(stranger);
        escrow.deposit(config, 5e6, address(pullCollector), "");
        assertEq(_escrowEvents(IUptoEscrow.ChannelCreated.selector), 0, "no ChannelCreated on top-up");
        assertEq(_balance(channelId), DEPOSIT + 5e6);
    }

    function test_Deposit_AcceptsDelayBounds() public {
        IUptoEscrow.ChannelConfig memory config = _config();
        config.withdrawDelay = 15 minutes;
        _deposit(config, 1);
        config.withdrawDelay = 30 days;
        _deposit(config, 1);
    }

    function test_Deposit_DoesNotTouchPendingWithdrawal() public {
        IUptoEscrow.ChannelConfig memory config = _config();
        bytes32 channelId = _deposit(config, DEPOSIT);
        vm.prank(payer);
        escrow.initiateWithdraw(config, 100e6);

        _deposit(config, 50e6);
        (uint128 amount, uint40 initiatedAt) = escrow.pendingWithdrawals(channelId);
        assertEq(amount, 100e6);
        assertEq(initiatedAt, block.timestamp);
    }

    function test_Deposit_ReopensAfterClose() public {
        IUptoEscrow.ChannelConfig memory config = _config();
        bytes32 channelId = _deposit(config, DEPOSIT);
        vm.prank(receiverAuth);
        escrow.refund(config, DEPOSIT);
        assertEq(_balance(channelId), 0);

        vm.expectEmit(true, true, true, true, address(escrow));
        emit IUptoEscrow.ChannelCreated(channelId, config);
        _deposit(config, 3e6);
    }

    function test_RevertWhen_DepositHasZeroPayer() public {
        IUptoEscrow.ChannelConfig memory config = _config();
        config.payer = address(0);
        vm.expectRevert(IUptoEscrow.InvalidChannel.selector);
        escrow.deposit(config, DEPOSIT, address(pullCollector), "");
    }

    function test_RevertWhen_DepositHasZeroReceiver() public {
        IUptoEscrow.ChannelConfig memory config = _config();
        config.receiver = address(0);
        vm.expectRevert(IUptoEscrow.InvalidChannel.selector);
        escrow.deposit(config, DEPOSIT, address(pullCollector), "");
    }

    function test_RevertWhen_DepositHasZeroReceiverAuthorizer() public {
        IUptoEscrow.ChannelConfig memory config = _config();
        config.receiverAuthorizer = address(0);
        vm.expectRevert(IUptoEscrow.InvalidChannel.selector);
        escrow.deposit(config, DEPOSIT, address(pullCollector), "");
    }

    function test_RevertWhen_DepositHasZeroToken() public {
        IUptoEscrow.ChannelConfig memory config = _config();
        config.token = address(0);
        vm.expectRevert(IUptoEscrow.InvalidChannel.selector);
        escrow.deposit(config, DEPOSIT, address(pullCollector), "");
    }

    function test_RevertWhen_DepositDelayBelowMinimum() public {
        IUptoEscrow.ChannelConfig memory config = _config();
        config.withdrawDelay = 15 minutes - 1;
        vm.expectRevert(IUptoEscrow.WithdrawDelayOutOfRange.selector);
        escrow.deposit(config, DEPOSIT, address(pullCollector), "");
    }

    function test_RevertWhen_DepositDelayAboveMaximum() public {
        IUptoEscrow.ChannelConfig memory config = _config();
        config.withdrawDelay = 30 days + 1;
        vm.expectRevert(IUptoEscrow.WithdrawDelayOutOfRange.selector);
        escrow.deposit(config, DEPOSIT, address(pullCollector), "");
    }

    function test_RevertWhen_DepositAmountIsZero() public {
        vm.expectRevert(IUptoEscrow.ZeroDeposit.selector);
        escrow.deposit(_config(), 0, address(pullCollector), "");
    }

    function test_RevertWhen_DepositCollectorIsZero() public {
        vm.expectRevert(IUptoEscrow.InvalidCollector.selector);
        escrow.deposit(_config(), DEPOSIT, address(0), "");
    }

    function test_RevertWhen_DepositOverflowsBalance() public {
        IUptoEscrow.ChannelConfig memory config = _config();
        _deposit(config, type(uint128).max);
        usdc.mint(payer, 1);
        vm.prank(payer);
        vm.expectRevert(IUptoEscrow.DepositOverflow.selector);
        escrow.deposit(config, 1, address(pullCollector), "");
    }

    function test_RevertWhen_DepositTokenTakesFee() public {
        FeeOnTransferToken fee = new FeeOnTransferToken();
        fee.mint(payer, DEPOSIT);
        vm.prank(payer);
        fee.approve(address(pullCollector), type(uint256).max);
        IUptoEscrow.ChannelConfig memory config = _config();
        config.token = address(fee);
        vm.prank(payer);
        vm.expectRevert(IUptoEscrow.DepositCollectionFailed.selector);
        escrow.deposit(config, DEPOSIT, address(pullCollector), "");
    }

    function test_RevertWhen_CollectorSendsLess() public {
        badCollector.setSendAmount(DEPOSIT - 1);
        vm.expectRevert(IUptoEscrow.DepositCollectionFailed.selector);
        escrow.deposit(_config(), DEPOSIT, address(badCollector), "");
    }

    function test_RevertWhen_CollectorSendsMore() public {
        badCollector.setSendAmount(DEPOSIT + 1);
        vm.expectRevert(IUptoEscrow.DepositCollectionFailed.selector);
        escrow.deposit(_config(), DEPOSIT, address(badCollector), "");
    }

    function test_RevertWhen_CollectorSendsNothing() public {
        vm.expectRevert(IUptoEscrow.DepositCollectionFailed.selector);
        escrow.deposit(_config(), DEPOSIT, address(badCollector), "");
    }

    function test_RevertWhen_CollectorReenters() public {
        IUptoEscrow.ChannelConfig memory config = _config();
        _deposit(config, DEPOSIT);
        badCollector.setSendAmount(DEPOSIT);
        badCollector.setReentry(address(escrow), abi.encodeCall(escrow.settle, (receiver, address(usdc))));
        vm.expectRevert(ReentrancyGuardTransient.ReentrancyGuardReentrantCall.selector);
        escrow.deposit(config, DEPOSIT, address(badCollector), "");
    }

    /// @dev A collector's donation from its own pocket is a valid deposit: the receipt check is what matters.
    function test_Deposit_CreditsExactReceiptFromAnyCollector() public {
        badCollector.setSendAmount(DEPOSIT);
        bytes32 channelId = escrow.getChannelId(_config());
        escrow.deposit(_config(), DEPOSIT, address(badCollector), "");
        assertEq(_balance(channelId), DEPOSIT);
    }
}
