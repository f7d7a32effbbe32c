// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {Erc3009DepositCollector} from "../src/Erc3009DepositCollector.sol";
import {IUptoEscrow} from "../src/interfaces/IUptoEscrow.sol";
import {EscrowHashes} from "../src/libraries/EscrowHashes.sol";
import {MockUSDC} from "../src/mocks/MockUSDC.sol";
import {UptoEscrow} from "../src/UptoEscrow.sol";
import {Test} from "./utils/Test.sol";
import {vm} from "./utils/Vm.sol";

/// @notice Cross-language test vectors in `test/fixtures/vectors.json`, produced from the real contracts.
/// @dev The deployment mirrors `script/Deploy.s.sol` run by anvil's first account on a fresh chain 31337 (escrow at
///      nonce 0, collector at nonce 1, MockUSDC at nonce 2), so the addresses are the ones a local anvil gets.
///      All keys are anvil's well-known development keys; signatures are RFC 6979 (deterministic, low-s).
///      Regenerate after an intended change with:
///      `UPDATE_VECTORS=true forge test --match-test test_Vectors_FileIsUpToDate`
contract VectorsTest is Test {
    string internal constant PATH = "test/fixtures/vectors.json";

    uint256 internal constant DEPLOYER_KEY = 0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80;
    uint256 internal constant PAYER_KEY = 0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d;
    uint256 internal constant PAYER_AUTH_KEY = 0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a;
    uint256 internal constant RECEIVER_KEY = 0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6;
    uint256 internal constant RECEIVER_AUTH_KEY = 0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a;

    address internal constant ESCROW = 0x5FbDB2315678afecb367f032d93F642f64180aa3;
    address internal constant COLLECTOR = 0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512;
    address internal constant TOKEN = 0x9fE46736679d2D9a65F0992F2272dE9f3c7fa6e0;

    bytes32 internal constant CHANNEL_SALT = keccak256("x402-upto/vectors/channel-salt");
    uint256 internal constant ERC3009_SALT = uint256(keccak256("x402-upto/vectors/erc3009-salt"));
    uint128 internal constant VOUCHER_MAX = 5000;
    uint128 internal constant CLAIM_TOTAL = 4000;
    uint128 internal constant REFUND_AMOUNT = 1500;

    UptoEscrow internal escrow;
    Erc3009DepositCollector internal collector;
    MockUSDC internal usdc;

    function setUp() public {
        vm.chainId(31_337);
        vm.warp(1_700_000_000);
        address deployer = vm.addr(DEPLOYER_KEY);
        vm.startPrank(deployer);
        escrow = new UptoEscrow();
        collector = new Erc3009DepositCollector(address(escrow));
        usdc = new MockUSDC();
        vm.stopPrank();
    }

    /// @notice The EIP-712 type hashes equal the values x402 publishes, recomputed here from the type strings.
    function test_Typehashes_MatchPublishedValues() public view {
        _checkTypehash(
            "ChannelConfig(address payer,address payerAuthorizer,address receiver,address receiverAuthorizer,address token,uint40 withdrawDelay,bytes32 salt)",
            0x1c9a06ceab9b0ebbd3301dc56c9111bb6d9af421356dc9ccb3b7084c755db308,
            escrow.CHANNEL_CONFIG_TYPEHASH(),
            EscrowHashes.CHANNEL_CONFIG_TYPEHASH
        );
        _checkTypehash(
            "Voucher(bytes32 channelId,uint128 maxClaimableAmount)",
            0x1e1bd6ff84c3e0d9029a292b212e039c0ca97ec497c55191a4a5874294609a69,
            escrow.VOUCHER_TYPEHASH(),
            EscrowHashes.VOUCHER_TYPEHASH
        );
        _checkTypehash(
            "Refund(bytes32 channelId,uint256 nonce,uint128 amount)",
            0xbe23ad087435072cd69b49cc5b92de10ee610fce7ae0ab428307972d764bb216,
            escrow.REFUND_TYPEHASH(),
            EscrowHashes.REFUND_TYPEHASH
        );
        _checkTypehash(
            "ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)",
            0x30b9a0367528fca13c3e8ec6134c3113f1887ebe7a1ad61de0955aac288b0cf5,
            escrow.CLAIM_ENTRY_TYPEHASH(),
            EscrowHashes.CLAIM_ENTRY_TYPEHASH
        );
        _checkTypehash(
            "ClaimBatch(ClaimEntry[] claims)ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)",
            0x42bd57c010b870c2e96203c66341f28a6a19b4d56a74533a8eb5f706b9fd6d57,
            escrow.CLAIM_BATCH_TYPEHASH(),
            EscrowHashes.CLAIM_BATCH_TYPEHASH
        );
        _checkTypehash(
            "ReceiveWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)",
            0xd099cc98ef71107a616c4f0f941f04c322d8e254fe26b3c6668db87aae413de8,
            usdc.RECEIVE_WITH_AUTHORIZATION_TYPEHASH(),
            usdc.RECEIVE_WITH_AUTHORIZATION_TYPEHASH()
        );
    }

    /// @notice The committed fixture is exactly what the contracts produce today.
    function test_Vectors_FileIsUpToDate() public {
        string memory rendered = _render();
        if (vm.envOr("UPDATE_VECTORS", false)) {
            vm.writeFile(PATH, rendered);
            return;
        }
        assertEq(vm.readFile(PATH), rendered, "vectors.json is stale: rerun with UPDATE_VECTORS=true");
    }

    /// @notice Reads every value back from the committed file and checks it against the contracts, then runs the
    ///         vector's signatures through a real deposit, relayed claim and relayed refund.
    function test_Vectors_MatchContracts() public {
        string memory json = vm.readFile(PATH);
        _checkDeployment(json);
        (IUptoEscrow.ChannelConfig memory config, bytes32 channelId) = _checkChannel(json);
        bytes memory voucherSig = _checkVoucher(json, config, channelId);
        _checkRefund(json, config, channelId);
        IUptoEscrow.VoucherClaim[] memory rows = _checkClaimBatch(json, config, channelId, voucherSig);
        uint256 erc3009Salt = _checkErc3009(json, channelId);

        // End to end with the vector's own values: ERC-3009 deposit, relayed claim, relayed refund, settle.
        usdc.mint(config.payer, 10_000);
        escrow.deposit(config, 10_000, address(collector), _erc3009Data(config, 10_000, erc3009Salt));
        assertTrue(
            usdc.authorizationState(config.payer, keccak256(abi.encode(channelId, erc3009Salt))),
            "deposit consumed the vector nonce"
        );
        escrow.claimWithSignature(rows, vm.parseJsonBytes(json, ".claimBatch.signature"));
        assertEq(_claimed(channelId), CLAIM_TOTAL);
        escrow.refundWithSignature(config, REFUND_AMOUNT, 0, vm.parseJsonBytes(json, ".refund.signature"));
        assertEq(usdc.balanceOf(config.payer), REFUND_AMOUNT);
        escrow.settle(config.receiver, address(usdc));
        assertEq(usdc.balanceOf(config.receiver), CLAIM_TOTAL);
    }

    function _checkDeployment(string memory json) internal view {
        assertEq(vm.parseJsonUint(json, ".chainId"), block.chainid);
        assertEq(vm.parseJsonAddress(json, ".escrow"), address(escrow));
        assertEq(address(escrow), ESCROW, "escrow at anvil account 0, nonce 0");
        assertEq(address(collector), COLLECTOR, "collector at nonce 1");
        assertEq(address(usdc), TOKEN, "MockUSDC at nonce 2");
        assertEq(vm.parseJsonBytes32(json, ".domainSeparator"), _domainSeparator());
        assertEq(vm.parseJsonBytes32(json, ".typehashes.channelConfig"), escrow.CHANNEL_CONFIG_TYPEHASH());
        assertEq(vm.parseJsonBytes32(json, ".typehashes.voucher"), escrow.VOUCHER_TYPEHASH());
        assertEq(vm.parseJsonBytes32(json, ".typehashes.refund"), escrow.REFUND_TYPEHASH());
        assertEq(vm.parseJsonBytes32(json, ".typehashes.claimEntry"), escrow.CLAIM_ENTRY_TYPEHASH());
        assertEq(vm.parseJsonBytes32(json, ".typehashes.claimBatch"), escrow.CLAIM_BATCH_TYPEHASH());
        assertEq(
            vm.parseJsonBytes32(json, ".typehashes.receiveWithAuthorization"),
            usdc.RECEIVE_WITH_AUTHORIZATION_TYPEHASH()
        );
    }

    function _checkChannel(string memory json)
        internal
        view
        returns (IUptoEscrow.ChannelConfig memory config, bytes32 channelId)
    {
        config = IUptoEscrow.ChannelConfig({
            payer: vm.parseJsonAddress(json, ".channelConfig.payer"),
            payerAuthorizer: vm.parseJsonAddress(json, ".channelConfig.payerAuthorizer"),
            receiver: vm.parseJsonAddress(json, ".channelConfig.receiver"),
            receiverAuthorizer: vm.parseJsonAddress(json, ".channelConfig.receiverAuthorizer"),
            token: vm.parseJsonAddress(json, ".channelConfig.token"),
            withdrawDelay: uint40(vm.parseJsonUint(json, ".channelConfig.withdrawDelay")),
            salt: vm.parseJsonBytes32(json, ".channelConfig.salt")
        });
        assertEq(keccak256(abi.encode(config)), keccak256(abi.encode(_channelConfig())), "channelConfig");
        channelId = vm.parseJsonBytes32(json, ".channelId");
        assertEq(escrow.getChannelId(config), channelId, "channelId");
    }

    function _checkVoucher(string memory json, IUptoEscrow.ChannelConfig memory config, bytes32 channelId)
        internal
        view
        returns (bytes memory signature)
    {
        uint128 voucherMax = uint128(_parseAmount(json, ".voucher.maxClaimableAmount"));
        bytes32 digest = vm.parseJsonBytes32(json, ".voucher.digest");
        signature = vm.parseJsonBytes(json, ".voucher.signature");
        assertEq(voucherMax, VOUCHER_MAX);
        assertEq(escrow.getVoucherDigest(channelId, voucherMax), digest, "voucher digest");
        assertEq(vm.addr(uint256(vm.parseJsonBytes32(json, ".voucher.signerPrivateKey"))), config.payerAuthorizer);
        assertEq(vm.parseJsonAddress(json, ".voucher.signer"), config.payerAuthorizer);
        assertEq(signature.length, 65);
        assertEq(_recover(digest, signature), config.payerAuthorizer, "voucher signature");
    }

    function _checkRefund(string memory json, IUptoEscrow.ChannelConfig memory config, bytes32 channelId)
        internal
        view
    {
        assertEq(
            vm.addr(uint256(vm.parseJsonBytes32(json, ".receiverAuthorizerPrivateKey"))), config.receiverAuthorizer
        );
        assertEq(_parseAmount(json, ".refund.nonce"), 0);
        assertEq(_parseAmount(json, ".refund.amount"), REFUND_AMOUNT);
        bytes32 digest = vm.parseJsonBytes32(json, ".refund.digest");
        assertEq(escrow.getRefundDigest(channelId, 0, REFUND_AMOUNT), digest, "refund digest");
        assertEq(_recover(digest, vm.parseJsonBytes(json, ".refund.signature")), config.receiverAuthorizer);
    }

    function _checkClaimBatch(
        string memory json,
        IUptoEscrow.ChannelConfig memory config,
        bytes32 channelId,
        bytes memory voucherSig
    ) internal view returns (IUptoEscrow.VoucherClaim[] memory rows) {
        assertEq(vm.parseJsonBytes32(json, ".claimBatch.entries[0].channelId"), channelId);
        rows = new IUptoEscrow.VoucherClaim[](1);
        rows[0] = IUptoEscrow.VoucherClaim({
            voucher: IUptoEscrow.Voucher({
                channel: config,
                maxClaimableAmount: uint128(_parseAmount(json, ".claimBatch.entries[0].maxClaimableAmount"))
            }),
            signature: voucherSig,
            totalClaimed: uint128(_parseAmount(json, ".claimBatch.entries[0].totalClaimed"))
        });
        assertEq(rows[0].voucher.maxClaimableAmount, VOUCHER_MAX);
        assertEq(rows[0].totalClaimed, CLAIM_TOTAL);
        bytes32 digest = vm.parseJsonBytes32(json, ".claimBatch.digest");
        assertEq(escrow.getClaimBatchDigest(rows), digest, "claim batch digest");
        assertEq(_recover(digest, vm.parseJsonBytes(json, ".claimBatch.signature")), config.receiverAuthorizer);
    }

    function _checkErc3009(string memory json, bytes32 channelId) internal pure returns (uint256 salt) {
        salt = uint256(vm.parseJsonBytes32(json, ".erc3009.salt"));
        assertEq(salt, ERC3009_SALT);
        assertEq(vm.parseJsonBytes32(json, ".erc3009.nonce"), keccak256(abi.encode(channelId, salt)), "erc3009 nonce");
    }

    /// @dev Amounts are decimal strings in the fixture (they can exceed JavaScript's safe integers).
    function _parseAmount(string memory json, string memory key) internal pure returns (uint256) {
        return vm.parseUint(vm.parseJsonString(json, key));
    }

    /*//////////////////////////////////////////////////////////////
                                 RENDERING
    //////////////////////////////////////////////////////////////*/

    function _channelConfig() internal pure returns (IUptoEscrow.ChannelConfig memory) {
        return IUptoEscrow.ChannelConfig({
            payer: vm.addr(PAYER_KEY),
            payerAuthorizer: vm.addr(PAYER_AUTH_KEY),
            receiver: vm.addr(RECEIVER_KEY),
            receiverAuthorizer: vm.addr(RECEIVER_AUTH_KEY),
            token: TOKEN,
            withdrawDelay: 900,
            salt: CHANNEL_SALT
        });
    }

    /// @dev Pretty-printed with two-space indentation and a trailing newline; keys in the documented order.
    function _render() internal view returns (string memory) {
        IUptoEscrow.ChannelConfig memory config = _channelConfig();
        bytes32 channelId = escrow.getChannelId(config);
        return string.concat(
            _renderHead(),
            _renderChannel(config, channelId),
            _renderSignatures(channelId),
            _renderTail(config, channelId)
        );
    }

    function _renderHead() internal view returns (string memory) {
        string memory top = string.concat(
            "{\n",
            _field("chainId", vm.toString(block.chainid)),
            _field("escrow", _q(vm.toString(address(escrow)))),
            _field("domainSeparator", _q(vm.toString(_domainSeparator())))
        );
        string memory typehashes = string.concat(
            _entry("channelConfig", vm.toString(escrow.CHANNEL_CONFIG_TYPEHASH()), false),
            _entry("voucher", vm.toString(escrow.VOUCHER_TYPEHASH()), false),
            _entry("refund", vm.toString(escrow.REFUND_TYPEHASH()), false),
            _entry("claimEntry", vm.toString(escrow.CLAIM_ENTRY_TYPEHASH()), false),
            _entry("claimBatch", vm.toString(escrow.CLAIM_BATCH_TYPEHASH()), false),
            _entry("receiveWithAuthorization", vm.toString(usdc.RECEIVE_WITH_AUTHORIZATION_TYPEHASH()), true)
        );
        return string.concat(top, "  \"typehashes\": {\n", typehashes, "  },\n");
    }

    function _renderChannel(IUptoEscrow.ChannelConfig memory config, bytes32 channelId)
        internal
        pure
        returns (string memory)
    {
        string memory parties = string.concat(
            _entry("payer", vm.toString(config.payer), false),
            _entry("payerAuthorizer", vm.toString(config.payerAuthorizer), false),
            _entry("receiver", vm.toString(config.receiver), false),
            _entry("receiverAuthorizer", vm.toString(config.receiverAuthorizer), false)
        );
        string memory rest = string.concat(
            _entry("token", vm.toString(config.token), false),
            string.concat("    \"withdrawDelay\": ", vm.toString(uint256(config.withdrawDelay)), ",\n"),
            _entry("salt", vm.toString(config.salt), true)
        );
        return string.concat(
            "  \"channelConfig\": {\n", parties, rest, "  },\n", _field("channelId", _q(vm.toString(channelId)))
        );
    }

    function _renderSignatures(bytes32 channelId) internal view returns (string memory) {
        bytes32 voucherDigest = escrow.getVoucherDigest(channelId, VOUCHER_MAX);
        bytes32 refundDigest = escrow.getRefundDigest(channelId, 0, REFUND_AMOUNT);
        string memory voucher = string.concat(
            _entry("maxClaimableAmount", vm.toString(uint256(VOUCHER_MAX)), false),
            _entry("digest", vm.toString(voucherDigest), false),
            _entry("signerPrivateKey", vm.toString(bytes32(PAYER_AUTH_KEY)), false),
            _entry("signer", vm.toString(vm.addr(PAYER_AUTH_KEY)), false),
            _entry("signature", vm.toString(_sign(PAYER_AUTH_KEY, voucherDigest)), true)
        );
        string memory refund = string.concat(
            _entry("nonce", "0", false),
            _entry("amount", vm.toString(uint256(REFUND_AMOUNT)), false),
            _entry("digest", vm.toString(refundDigest), false),
            _entry("signature", vm.toString(_sign(RECEIVER_AUTH_KEY, refundDigest)), true)
        );
        return string.concat(
            string.concat("  \"voucher\": {\n", voucher, "  },\n"),
            string.concat("  \"refund\": {\n", refund, "  },\n"),
            _field("receiverAuthorizerPrivateKey", _q(vm.toString(bytes32(RECEIVER_AUTH_KEY))))
        );
    }

    function _renderTail(IUptoEscrow.ChannelConfig memory config, bytes32 channelId)
        internal
        view
        returns (string memory)
    {
        IUptoEscrow.VoucherClaim[] memory rows = new IUptoEscrow.VoucherClaim[](1);
        rows[0] = IUptoEscrow.VoucherClaim({
            voucher: IUptoEscrow.Voucher({channel: config, maxClaimableAmount: VOUCHER_MAX}),
            signature: "",
            totalClaimed: CLAIM_TOTAL
        });
        bytes32 batchDigest = escrow.getClaimBatchDigest(rows);
        string memory entries = string.concat(
            "    \"entries\": [\n      {\n        \"channelId\": \"",
            vm.toString(channelId),
            "\",\n        \"maxClaimableAmount\": \"",
            vm.toString(uint256(VOUCHER_MAX)),
            "\",\n        \"totalClaimed\": \"",
            vm.toString(uint256(CLAIM_TOTAL)),
            "\"\n      }\n    ],\n"
        );
        string memory batch = string.concat(
            "  \"claimBatch\": {\n",
            entries,
            _entry("digest", vm.toString(batchDigest), false),
            _entry("signature", vm.toString(_sign(RECEIVER_AUTH_KEY, batchDigest)), true),
            "  },\n"
        );
        string memory erc3009 = string.concat(
            "  \"erc3009\": {\n",
            _entry("salt", vm.toString(bytes32(ERC3009_SALT)), false),
            _entry("nonce", vm.toString(keccak256(abi.encode(channelId, ERC3009_SALT))), true),
            "  }\n"
        );
        return string.concat(batch, erc3009, "}\n");
    }

    /// @dev A top-level `"key": value,` line (value already rendered; never the last line of the object).
    function _field(string memory key, string memory value) internal pure returns (string memory) {
        return string.concat("  \"", key, "\": ", value, ",\n");
    }

    /// @dev A nested `"key": "value"` line.
    function _entry(string memory key, string memory value, bool last) internal pure returns (string memory) {
        return string.concat("    \"", key, "\": \"", value, last ? "\"\n" : "\",\n");
    }

    function _q(string memory value) internal pure returns (string memory) {
        return string.concat("\"", value, "\"");
    }

    /*//////////////////////////////////////////////////////////////
                                 HELPERS
    //////////////////////////////////////////////////////////////*/

    function _checkTypehash(string memory typeString, bytes32 published, bytes32 onChain, bytes32 library_)
        internal
        pure
    {
        assertEq(keccak256(bytes(typeString)), published, typeString);
        assertEq(onChain, published, typeString);
        assertEq(library_, published, typeString);
    }

    function _domainSeparator() internal view returns (bytes32) {
        return keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak256("x402 Batch Settlement"),
                keccak256("1"),
                block.chainid,
                address(escrow)
            )
        );
    }

    function _sign(uint256 key, bytes32 digest) internal pure returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
        return abi.encodePacked(r, s, v);
    }

    function _recover(bytes32 digest, bytes memory signature) internal pure returns (address) {
        bytes32 r;
        bytes32 s;
        uint8 v;
        assembly ("memory-safe") {
            r := mload(add(signature, 0x20))
            s := mload(add(signature, 0x40))
            v := byte(0, mload(add(signature, 0x60)))
        }
        return ecrecover(digest, v, r, s);
    }

    function _claimed(bytes32 channelId) internal view returns (uint128 totalClaimed) {
        (, totalClaimed) = escrow.channels(channelId);
    }

    function _erc3009Data(IUptoEscrow.ChannelConfig memory config, uint256 amount, uint256 salt)
        internal
        view
        returns (bytes memory)
    {
        bytes32 nonce = keccak256(abi.encode(escrow.getChannelId(config), salt));
        bytes32 structHash = keccak256(
            abi.encode(
                usdc.RECEIVE_WITH_AUTHORIZATION_TYPEHASH(),
                config.payer,
                address(collector),
                amount,
                uint256(0),
                type(uint256).max,
                nonce
            )
        );
        bytes32 digest = keccak256(abi.encodePacked("\x19\x01", usdc.DOMAIN_SEPARATOR(), structHash));
        return abi.encode(uint256(0), type(uint256).max, salt, _sign(PAYER_KEY, digest));
    }
}
