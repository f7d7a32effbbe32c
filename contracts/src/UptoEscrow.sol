// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Multicall} from "@openzeppelin/contracts/utils/Multicall.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {SignatureChecker} from "@openzeppelin/contracts/utils/cryptography/SignatureChecker.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";

import {IDepositCollector} from "./interfaces/IDepositCollector.sol";
import {IUptoEscrow} from "./interfaces/IUptoEscrow.sol";
import {EscrowHashes} from "./libraries/EscrowHashes.sol";

/// @title UptoEscrow
/// @notice Payment-channel escrow for x402 `batch-settlement`, ABI- and EIP-712-compatible with x402BatchSettlement.
/// @dev Needs EIP-1153 (transient storage) for the reentrancy guard. Fee-on-transfer tokens are refused at deposit;
///      rebasing tokens are not supported.
contract UptoEscrow is IUptoEscrow, EIP712, Multicall, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    /*//////////////////////////////////////////////////////////////
                         CONSTANTS AND STORAGE
    //////////////////////////////////////////////////////////////*/

    uint40 public constant MIN_WITHDRAW_DELAY = 15 minutes;
    uint40 public constant MAX_WITHDRAW_DELAY = 30 days;

    // Type hashes are written as literals so the claim loop's assembly can use them; the preimages are in
    // EscrowHashes, and test/Vectors.t.sol checks each literal against keccak256 of its type string.

    /// @dev keccak256 of the `ChannelConfig` type string (see EscrowHashes).
    bytes32 public constant CHANNEL_CONFIG_TYPEHASH =
        0x1c9a06ceab9b0ebbd3301dc56c9111bb6d9af421356dc9ccb3b7084c755db308;
    /// @dev keccak256("Voucher(bytes32 channelId,uint128 maxClaimableAmount)")
    bytes32 public constant VOUCHER_TYPEHASH = 0x1e1bd6ff84c3e0d9029a292b212e039c0ca97ec497c55191a4a5874294609a69;
    /// @dev keccak256("Refund(bytes32 channelId,uint256 nonce,uint128 amount)")
    bytes32 public constant REFUND_TYPEHASH = 0xbe23ad087435072cd69b49cc5b92de10ee610fce7ae0ab428307972d764bb216;
    /// @dev keccak256("ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)")
    bytes32 public constant CLAIM_ENTRY_TYPEHASH = 0x30b9a0367528fca13c3e8ec6134c3113f1887ebe7a1ad61de0955aac288b0cf5;
    /// @dev keccak256 of the `ClaimBatch` type string with `ClaimEntry` appended (see EscrowHashes).
    bytes32 public constant CLAIM_BATCH_TYPEHASH = 0x42bd57c010b870c2e96203c66341f28a6a19b4d56a74533a8eb5f706b9fd6d57;

    /// @dev keccak256("Claimed(bytes32,address,uint128,uint128)"), the `Claimed` event topic, emitted from assembly.
    bytes32 private constant _CLAIMED_TOPIC = 0x36bd546bb573e8921fdbfd934bbed62d872796b01792cd240cce27f79dd3eddd;

    /// @dev Largest `s` accepted in an ECDSA signature: half the secp256k1 group order.
    uint256 private constant _HALF_CURVE_ORDER = 0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0;

    /// @dev Per channel, `balance` in the low 128 bits and `totalClaimed` in the high 128 bits (the layout Solidity
    ///      gives `struct {uint128 balance; uint128 totalClaimed;}`), read and written as one word because the claim
    ///      loop touches both.
    mapping(bytes32 channelId => uint256 packed) private _channels;

    /// @dev The payer-exit state of a channel in one slot: a refund reads and writes all three fields.
    ///      A withdrawal is pending exactly when `withdrawAmount != 0` (initiation requires a non-zero amount and a
    ///      partial refund never takes it to zero).
    struct ExitState {
        uint128 withdrawAmount;
        uint40 withdrawInitiatedAt;
        uint88 refundNonce;
    }

    mapping(bytes32 channelId => ExitState) private _exits;

    struct ReceiverTotals {
        uint128 totalClaimed;
        uint128 totalSettled;
    }

    mapping(address receiver => mapping(address token => ReceiverTotals)) private _receivers;

    /// @dev Claims of consecutive batch rows that pay the same (receiver, token), not yet written to `_receivers`.
    struct ReceiverRun {
        address receiver;
        address token;
        uint256 amount;
    }

    constructor() EIP712("x402 Batch Settlement", "1") {}

    /*//////////////////////////////////////////////////////////////
                                DEPOSITS
    //////////////////////////////////////////////////////////////*/

    /// @inheritdoc IUptoEscrow
    function deposit(ChannelConfig calldata config, uint128 amount, address collector, bytes calldata collectorData)
        external
        nonReentrant
    {
        if (
            config.payer == address(0) || config.receiver == address(0) || config.receiverAuthorizer == address(0)
                || config.token == address(0)
        ) revert InvalidChannel();
        if (config.withdrawDelay < MIN_WITHDRAW_DELAY || config.withdrawDelay > MAX_WITHDRAW_DELAY) {
            revert WithdrawDelayOutOfRange();
        }
        if (amount == 0) revert ZeroDeposit();
        if (collector == address(0)) revert InvalidCollector();

        bytes32 channelId = _channelId(config);
        uint256 slot = _channelSlot(channelId);
        (uint128 balance, uint128 claimed) = _loadChannel(slot);
        if (amount > type(uint128).max - balance) revert DepositOverflow();

        IERC20 token = IERC20(config.token);
        uint256 before = token.balanceOf(address(this));
        IDepositCollector(collector).collect(config.payer, address(token), amount, channelId, collectorData);
        if (token.balanceOf(address(this)) != before + amount) revert DepositCollectionFailed();

        // Credited only once the funds are here, so no view ever reports a balance the escrow does not hold.
        uint128 newBalance = balance + amount;
        _storeChannel(slot, newBalance, claimed);
        if (balance == 0 && claimed == 0) emit ChannelCreated(channelId, config);
        emit Deposited(channelId, msg.sender, amount, newBalance);
    }

    /*//////////////////////////////////////////////////////////////
                            CLAIM AND SETTLE
    //////////////////////////////////////////////////////////////*/

    /// @inheritdoc IUptoEscrow
    function claim(VoucherClaim[] calldata voucherClaims) external nonReentrant {
        _applyClaims(voucherClaims, false);
    }

    /// @inheritdoc IUptoEscrow
    function claimWithSignature(VoucherClaim[] calldata voucherClaims, bytes calldata authorizerSignature)
        external
        nonReentrant
    {
        (bytes32 domainSeparator, bytes32 batchHash) = _applyClaims(voucherClaims, true);
        // Checking last is safe (any failure reverts every row) and lets the loop hash each channel id only once.
        bytes32 digest = EscrowHashes.typedDataHash(domainSeparator, batchHash);
        address authorizer = voucherClaims[0].voucher.channel.receiverAuthorizer;
        if (!SignatureChecker.isValidSignatureNowCalldata(authorizer, digest, authorizerSignature)) {
            revert InvalidSignature();
        }
    }

    /// @inheritdoc IUptoEscrow
    function settle(address receiver, address token) external nonReentrant {
        ReceiverTotals storage totals = _receivers[receiver][token];
        uint128 claimed = totals.totalClaimed;
        uint128 amount = claimed - totals.totalSettled;
        if (amount == 0) return;

        totals.totalSettled = claimed;
        IERC20(token).safeTransfer(receiver, amount);
        emit Settled(receiver, token, msg.sender, amount);
    }

    /*//////////////////////////////////////////////////////////////
                          REFUND AND WITHDRAW
    //////////////////////////////////////////////////////////////*/

    /// @inheritdoc IUptoEscrow
    function initiateWithdraw(ChannelConfig calldata config, uint128 amount) external nonReentrant {
        if (msg.sender != config.payer && msg.sender != config.payerAuthorizer) revert InvalidChannel();
        if (amount == 0) revert NothingToWithdraw();

        bytes32 channelId = _channelId(config);
        ExitState storage exit = _exits[channelId];
        if (exit.withdrawAmount != 0) revert WithdrawalAlreadyPending();
        (uint128 balance, uint128 claimed) = _loadChannel(_channelSlot(channelId));
        if (amount > balance - claimed) revert WithdrawAmountExceedsAvailable();

        exit.withdrawAmount = amount;
        exit.withdrawInitiatedAt = uint40(block.timestamp);
        emit WithdrawInitiated(channelId, amount, uint40(block.timestamp) + config.withdrawDelay);
    }

    /// @inheritdoc IUptoEscrow
    function finalizeWithdraw(ChannelConfig calldata config) external nonReentrant {
        if (msg.sender != config.payer && msg.sender != config.payerAuthorizer) {
            revert NotAuthorizedToFinalizeWithdraw();
        }

        bytes32 channelId = _channelId(config);
        ExitState storage exit = _exits[channelId];
        uint128 requested = exit.withdrawAmount;
        if (requested == 0) revert WithdrawalNotPending();
        if (block.timestamp < uint256(exit.withdrawInitiatedAt) + config.withdrawDelay) {
            revert WithdrawDelayNotElapsed();
        }

        uint256 slot = _channelSlot(channelId);
        (uint128 balance, uint128 claimed) = _loadChannel(slot);
        // Claims recorded during the delay take precedence over the request.
        uint128 available = balance - claimed;
        uint128 amount = requested < available ? requested : available;

        exit.withdrawAmount = 0;
        exit.withdrawInitiatedAt = 0;
        balance -= amount;
        _storeChannel(slot, balance, claimed);

        emit WithdrawFinalized(channelId, msg.sender, amount);
        if (balance == 0 && claimed == 0) emit ChannelClosed(channelId, config);
        if (amount != 0) IERC20(config.token).safeTransfer(config.payer, amount);
    }

    /// @inheritdoc IUptoEscrow
    function refund(ChannelConfig calldata config, uint128 amount) external nonReentrant {
        if (msg.sender != config.receiver && msg.sender != config.receiverAuthorizer) revert NotAuthorizedToRefund();
        _refund(config, _channelId(config), amount);
    }

    /// @inheritdoc IUptoEscrow
    function refundWithSignature(
        ChannelConfig calldata config,
        uint128 amount,
        uint256 nonce,
        bytes calldata receiverAuthorizerSignature
    ) external nonReentrant {
        bytes32 channelId = _channelId(config);
        if (nonce != _exits[channelId].refundNonce) revert InvalidRefundNonce();
        bytes32 digest = _hashTypedDataV4(EscrowHashes.hashRefund(channelId, nonce, amount));
        if (!SignatureChecker.isValidSignatureNowCalldata(
                config.receiverAuthorizer, digest, receiverAuthorizerSignature
            )) {
            revert InvalidSignature();
        }
        _refund(config, channelId, amount);
    }

    /*//////////////////////////////////////////////////////////////
                                 VIEWS
    //////////////////////////////////////////////////////////////*/

    /// @inheritdoc IUptoEscrow
    function channels(bytes32 channelId) external view returns (uint128 balance, uint128 totalClaimed) {
        return _loadChannel(_channelSlot(channelId));
    }

    /// @inheritdoc IUptoEscrow
    function refundNonce(bytes32 channelId) external view returns (uint256) {
        return _exits[channelId].refundNonce;
    }

    /// @inheritdoc IUptoEscrow
    function pendingWithdrawals(bytes32 channelId) external view returns (uint128 amount, uint40 initiatedAt) {
        ExitState storage exit = _exits[channelId];
        return (exit.withdrawAmount, exit.withdrawInitiatedAt);
    }

    /// @inheritdoc IUptoEscrow
    function receivers(address receiver, address token)
        external
        view
        returns (uint128 totalClaimed, uint128 totalSettled)
    {
        ReceiverTotals storage totals = _receivers[receiver][token];
        return (totals.totalClaimed, totals.totalSettled);
    }

    /// @inheritdoc IUptoEscrow
    function getChannelId(ChannelConfig calldata config) external view returns (bytes32) {
        return _channelId(config);
    }

    /// @inheritdoc IUptoEscrow
    function getVoucherDigest(bytes32 channelId, uint128 maxClaimableAmount) external view returns (bytes32) {
        return _hashTypedDataV4(EscrowHashes.hashVoucher(channelId, maxClaimableAmount));
    }

    /// @inheritdoc IUptoEscrow
    function getRefundDigest(bytes32 channelId, uint256 nonce, uint128 amount) external view returns (bytes32) {
        return _hashTypedDataV4(EscrowHashes.hashRefund(channelId, nonce, amount));
    }

    /// @inheritdoc IUptoEscrow
    function getClaimBatchDigest(VoucherClaim[] calldata voucherClaims) external view returns (bytes32) {
        bytes32 domainSeparator = _domainSeparatorV4();
        bytes32[] memory entryHashes = new bytes32[](voucherClaims.length);
        for (uint256 i; i < voucherClaims.length; ++i) {
            VoucherClaim calldata row = voucherClaims[i];
            bytes32 channelId =
                EscrowHashes.typedDataHash(domainSeparator, EscrowHashes.hashConfig(row.voucher.channel));
            entryHashes[i] = EscrowHashes.hashClaimEntry(channelId, row.voucher.maxClaimableAmount, row.totalClaimed);
        }
        return EscrowHashes.typedDataHash(domainSeparator, EscrowHashes.hashClaimBatch(entryHashes));
    }

    /*//////////////////////////////////////////////////////////////
                                INTERNALS
    //////////////////////////////////////////////////////////////*/

    /// @dev Applies every row and returns the domain separator and, when `relayed`, the `ClaimBatch` struct hash.
    ///      Authorization per row: the caller is the row's receiver side, or (relayed) the row shares the first
    ///      row's receiverAuthorizer, whose batch signature the caller checks afterwards.
    function _applyClaims(VoucherClaim[] calldata rows, bool relayed)
        private
        returns (bytes32 domainSeparator, bytes32 batchHash)
    {
        uint256 n = rows.length;
        if (n == 0) revert EmptyBatch();
        domainSeparator = _domainSeparatorV4();
        address authorizer = relayed ? rows[0].voucher.channel.receiverAuthorizer : address(0);
        bytes32[] memory entryHashes = new bytes32[](relayed ? n : 0);
        uint256 entry; // memory word for the current row's ClaimEntry hash; zero for a direct claim
        if (relayed) {
            assembly ("memory-safe") {
                entry := add(entryHashes, 0x20)
            }
        }

        // Adjacent rows paying the same (receiver, token) are summed and credited with one storage write.
        ReceiverRun memory run;
        for (uint256 i; i < n; ++i) {
            // rows[i], with the full 10-word row head required to lie inside the calldata.
            VoucherClaim calldata row;
            assembly ("memory-safe") {
                let rel := calldataload(add(rows.offset, shl(5, i)))
                row := add(rows.offset, rel)
                if or(gt(rel, 0xffffffffffffffff), gt(add(row, 0x140), calldatasize())) { revert(0, 0) }
            }
            uint256 delta = _claimRow(row, domainSeparator, authorizer, entry);
            if (relayed) entry += 0x20;
            if (delta == 0) continue;
            bool samePair;
            assembly ("memory-safe") {
                // Receiver and token words of the row head (offsets 0x40, 0x80), already validated by _claimRow.
                samePair := and(
                    eq(calldataload(add(row, 0x40)), mload(run)),
                    eq(calldataload(add(row, 0x80)), mload(add(run, 0x20)))
                )
                if samePair { mstore(add(run, 0x40), add(mload(add(run, 0x40)), delta)) }
            }
            if (!samePair) _restartRun(run, row.voucher.channel.receiver, row.voucher.channel.token, delta);
        }
        _creditReceiver(run.receiver, run.token, run.amount);

        if (relayed) batchHash = EscrowHashes.hashClaimBatch(entryHashes);
    }

    /// @dev Applies one row and returns how much it raised the channel's `totalClaimed`: zero, with no effect, when
    ///      the row is not above what is already claimed, which makes replays harmless. `entry` is the memory word
    ///      that receives the row's `ClaimEntry` hash in a relayed batch, zero in a direct claim.
    ///      This is the per-channel cost of a batch, so hashing, the ECDSA check and the event are assembly; the
    ///      checks and their errors stay in Solidity. Row words are validated as the ABI decoder would: addresses,
    ///      uint40 and uint128 must have clean high bits, and the signature's offset and length must stay inside
    ///      the calldata. All scratch memory is above the free memory pointer, which never moves.
    function _claimRow(VoucherClaim calldata row, bytes32 domainSeparator, address authorizer, uint256 entry)
        private
        returns (uint256 delta)
    {
        bytes32 channelId;
        uint256 slot;
        uint256 word; // (totalClaimed << 128) | balance
        uint128 ceiling;
        uint128 newTotal;
        {
            bool authorized;
            assembly ("memory-safe") {
                // Row head: config (7 words), maxClaimableAmount, signature offset, totalClaimed.
                let m := mload(0x40)
                mstore(m, CHANNEL_CONFIG_TYPEHASH)
                calldatacopy(add(m, 0x20), row, 0xe0)
                ceiling := calldataload(add(row, 0xe0))
                newTotal := calldataload(add(row, 0x120))
                {
                    let dirty := or(shr(160, mload(add(m, 0x20))), shr(160, mload(add(m, 0x40))))
                    dirty := or(dirty, or(shr(160, mload(add(m, 0x60))), shr(160, mload(add(m, 0x80)))))
                    dirty := or(dirty, or(shr(160, mload(add(m, 0xa0))), shr(40, mload(add(m, 0xc0)))))
                    if or(dirty, or(shr(128, ceiling), shr(128, newTotal))) { revert(0, 0) }
                }
                // Direct claim: the caller is the receiver or receiverAuthorizer (config words 2 and 3). Relayed: the
                // row names the batch's receiverAuthorizer.
                switch entry
                case 0 { authorized := or(eq(caller(), mload(add(m, 0x60))), eq(caller(), mload(add(m, 0x80)))) }
                default { authorized := eq(mload(add(m, 0x80)), authorizer) }

                // channelId = keccak256("\x19\x01" ‖ domainSeparator ‖ structHash), laid over the config words.
                mstore(add(m, 0x22), keccak256(m, 0x100))
                mstore(m, 0x1901000000000000000000000000000000000000000000000000000000000000)
                mstore(add(m, 0x02), domainSeparator)
                channelId := keccak256(m, 0x42)

                if entry {
                    mstore(m, CLAIM_ENTRY_TYPEHASH)
                    mstore(add(m, 0x20), channelId)
                    mstore(add(m, 0x40), ceiling)
                    mstore(add(m, 0x60), newTotal)
                    mstore(entry, keccak256(m, 0x80))
                }

                mstore(0x00, channelId)
                mstore(0x20, _channels.slot)
                slot := keccak256(0x00, 0x40)
                word := sload(slot)
            }
            if (!authorized) {
                if (entry == 0) revert NotAuthorizedToClaim();
                revert NotReceiverAuthorizer();
            }
        }

        if (newTotal <= word >> 128) return 0;
        if (newTotal > ceiling) revert ClaimExceedsCeiling();
        if (newTotal > word & type(uint128).max) revert ClaimExceedsBalance();

        // With a payer authorizer, the voucher must be its ECDSA signature, checked here with OpenZeppelin
        // `tryRecover`'s rules: exactly 65 bytes `r ‖ s ‖ v`, `s` at most half the curve order (its twin `n - s`
        // would be a second valid signature for the same voucher), `v` 27 or 28 (the precompile returns nothing
        // otherwise). Any other case goes to `_checkPayerSignature`.
        bool valid;
        assembly ("memory-safe") {
            // digest = keccak256("\x19\x01" ‖ domainSeparator ‖ keccak256(VOUCHER_TYPEHASH ‖ channelId ‖ ceiling)),
            // left in the first word of the precompile's input.
            let m := mload(0x40)
            mstore(m, VOUCHER_TYPEHASH)
            mstore(add(m, 0x20), channelId)
            mstore(add(m, 0x40), ceiling)
            mstore(add(m, 0x22), keccak256(m, 0x60))
            mstore(m, 0x1901000000000000000000000000000000000000000000000000000000000000)
            mstore(add(m, 0x02), domainSeparator)
            mstore(m, keccak256(m, 0x42))

            if calldataload(add(row, 0x20)) {
                // The signature's offset (relative to the row) and its 65 bytes must lie inside the calldata;
                // any other length is simply not a valid ECDSA signature.
                if gt(calldataload(add(row, 0x100)), 0xffffffffffffffff) { revert(0, 0) }
                let sig := add(row, calldataload(add(row, 0x100)))
                if eq(calldataload(sig), 65) {
                    if gt(add(sig, 0x61), calldatasize()) { revert(0, 0) }
                    let s := calldataload(add(sig, 0x40))
                    if iszero(gt(s, _HALF_CURVE_ORDER)) {
                        mstore(add(m, 0x20), byte(0, calldataload(add(sig, 0x60))))
                        mstore(add(m, 0x40), calldataload(add(sig, 0x20)))
                        mstore(add(m, 0x60), s)
                        mstore(0x00, 0)
                        pop(staticcall(gas(), 0x01, m, 0x80, 0x00, 0x20))
                        valid := eq(mload(0x00), calldataload(add(row, 0x20)))
                    }
                }
            }
        }
        if (!valid) _checkPayerSignature(row, channelId, ceiling, domainSeparator);

        assembly ("memory-safe") {
            sstore(slot, or(and(word, 0xffffffffffffffffffffffffffffffff), shl(128, newTotal)))
            delta := sub(newTotal, shr(128, word))
            // emit Claimed(channelId, msg.sender, delta, newTotal)
            let m := mload(0x40)
            mstore(m, delta)
            mstore(add(m, 0x20), newTotal)
            log3(m, 0x40, _CLAIMED_TOPIC, channelId, caller())
        }
    }

    /// @dev The voucher was not a valid ECDSA signature of the payer authorizer. That is final when the channel has
    ///      a payer authorizer; without one, the payer itself signs, as an EOA or an ERC-1271 wallet.
    function _checkPayerSignature(
        VoucherClaim calldata row,
        bytes32 channelId,
        uint128 ceiling,
        bytes32 domainSeparator
    ) private view {
        if (row.voucher.channel.payerAuthorizer != address(0)) revert InvalidSignature();
        bytes32 digest = EscrowHashes.typedDataHash(domainSeparator, EscrowHashes.hashVoucher(channelId, ceiling));
        if (!SignatureChecker.isValidSignatureNowCalldata(row.voucher.channel.payer, digest, row.signature)) {
            revert InvalidSignature();
        }
    }

    /// @dev Credits the current run and starts a new one for a row paying another (receiver, token).
    function _restartRun(ReceiverRun memory run, address receiver, address token, uint256 delta) private {
        _creditReceiver(run.receiver, run.token, run.amount);
        (run.receiver, run.token, run.amount) = (receiver, token, delta);
    }

    /// @dev Adds a run of claims to a (receiver, token) pair's claimed total.
    function _creditReceiver(address receiver, address token, uint256 amount) private {
        if (amount == 0) return;
        ReceiverTotals storage totals = _receivers[receiver][token];
        totals.totalClaimed = SafeCast.toUint128(totals.totalClaimed + amount);
    }

    /// @dev Shared tail of both refund paths. The nonce moves before the amount is capped, so every refund call,
    ///      even one that finds nothing to return, retires presigned refunds for the old nonce.
    function _refund(ChannelConfig calldata config, bytes32 channelId, uint128 amount) private {
        if (amount == 0) revert ZeroRefund();
        ExitState storage exit = _exits[channelId];
        exit.refundNonce += 1;

        uint256 slot = _channelSlot(channelId);
        (uint128 balance, uint128 claimed) = _loadChannel(slot);
        uint128 available = balance - claimed;
        uint128 refunded = amount < available ? amount : available;
        if (refunded == 0) return;

        balance -= refunded;
        _storeChannel(slot, balance, claimed);
        // A refund returns what a pending withdrawal asked for, so it shrinks the request by the same amount.
        uint128 pending = exit.withdrawAmount;
        if (pending != 0) {
            if (refunded >= pending) {
                exit.withdrawAmount = 0;
                exit.withdrawInitiatedAt = 0;
            } else {
                exit.withdrawAmount = pending - refunded;
            }
        }

        emit Refunded(channelId, msg.sender, refunded);
        if (balance == 0 && claimed == 0) emit ChannelClosed(channelId, config);
        IERC20(config.token).safeTransfer(config.payer, refunded);
    }

    function _channelId(ChannelConfig calldata config) private view returns (bytes32) {
        return EscrowHashes.typedDataHash(_domainSeparatorV4(), EscrowHashes.hashConfig(config));
    }

    /// @dev Storage slot of `_channels[channelId]` (standard mapping layout).
    function _channelSlot(bytes32 channelId) private pure returns (uint256 slot) {
        assembly ("memory-safe") {
            mstore(0x00, channelId)
            mstore(0x20, _channels.slot)
            slot := keccak256(0x00, 0x40)
        }
    }

    function _loadChannel(uint256 slot) private view returns (uint128 balance, uint128 totalClaimed) {
        uint256 word;
        assembly ("memory-safe") {
            word := sload(slot)
        }
        // Splitting the packed word is the intended truncation.
        // forge-lint: disable-next-line(unsafe-typecast)
        return (uint128(word), uint128(word >> 128));
    }

    function _storeChannel(uint256 slot, uint128 balance, uint128 totalClaimed) private {
        uint256 word = uint256(balance) | (uint256(totalClaimed) << 128);
        assembly ("memory-safe") {
            sstore(slot, word)
        }
    }
}
