// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title IUptoEscrow
/// @notice Escrow for the x402 `batch-settlement` scheme on EVM: a payer deposits into a channel, signs cumulative
///         EIP-712 vouchers off-chain, and the receiver side records claims for many channels in one transaction and
///         later sweeps them with `settle`.
/// @dev The external ABI, the events, the custom error selectors and every EIP-712 type are those of x402's
///      `x402BatchSettlement`, so its SDKs work against this contract unchanged. Amounts are token base units.
///
///      Accounting. A channel holds `balance` (deposits minus refunds and withdrawals) and `totalClaimed` (the
///      cumulative amount the receiver side has recorded), with `totalClaimed <= balance` at all times. Claimed funds
///      stay inside `balance`; `settle` moves them out per (receiver, token) and counts them in `totalSettled`.
///      What the payer can still get back is `balance - totalClaimed`.
interface IUptoEscrow {
    /*//////////////////////////////////////////////////////////////
                                STRUCTS
    //////////////////////////////////////////////////////////////*/

    /// @notice The immutable parameters of a channel. Its EIP-712 hash under this contract's domain is the
    ///         channel id, so a config names exactly one channel on one chain and one deployment.
    /// @param payer Owner of the deposited funds and recipient of refunds and withdrawals.
    /// @param payerAuthorizer EOA that signs vouchers; zero means vouchers are signed by `payer` (EOA or ERC-1271).
    /// @param receiver Where claimed funds are settled to.
    /// @param receiverAuthorizer Key (EOA or ERC-1271) that authorizes claims and refunds; never zero.
    /// @param token The ERC-20 held by the channel.
    /// @param withdrawDelay Seconds between `initiateWithdraw` and `finalizeWithdraw`, in
    ///        [`MIN_WITHDRAW_DELAY`, `MAX_WITHDRAW_DELAY`].
    /// @param salt Free value that distinguishes channels with otherwise identical parameters.
    struct ChannelConfig {
        address payer;
        address payerAuthorizer;
        address receiver;
        address receiverAuthorizer;
        address token;
        uint40 withdrawDelay;
        bytes32 salt;
    }

    /// @notice The payer-signed part of a claim row (the signature itself sits on `VoucherClaim`).
    /// @param channel The channel the voucher is for; its id is what the payer signed.
    /// @param maxClaimableAmount The cumulative ceiling the payer agreed to.
    struct Voucher {
        ChannelConfig channel;
        uint128 maxClaimableAmount;
    }

    /// @notice One row of a claim batch.
    /// @param voucher The voucher being redeemed.
    /// @param signature The payer-side signature over `Voucher(channelId, maxClaimableAmount)`.
    /// @param totalClaimed The new cumulative claimed amount (not a delta); at most `maxClaimableAmount`.
    struct VoucherClaim {
        Voucher voucher;
        bytes signature;
        uint128 totalClaimed;
    }

    /*//////////////////////////////////////////////////////////////
                                 EVENTS
    //////////////////////////////////////////////////////////////*/

    /// @notice A deposit took a channel from empty (no balance, nothing claimed) to funded. May repeat after a
    ///         `ChannelClosed`.
    event ChannelCreated(bytes32 indexed channelId, ChannelConfig config);

    /// @notice A refund or withdrawal left a channel with no balance and nothing claimed.
    event ChannelClosed(bytes32 indexed channelId, ChannelConfig config);

    /// @notice `sender` deposited `amount`; the channel now holds `newBalance`.
    event Deposited(bytes32 indexed channelId, address indexed sender, uint128 amount, uint128 newBalance);

    /// @notice `sender` raised the channel's cumulative claim by `claimAmount` to `newTotalClaimed`.
    event Claimed(bytes32 indexed channelId, address indexed sender, uint128 claimAmount, uint128 newTotalClaimed);

    /// @notice `amount` of claimed `token` was transferred to `receiver`; `sender` called `settle`.
    event Settled(address indexed receiver, address indexed token, address indexed sender, uint128 amount);

    /// @notice `amount` of unclaimed escrow went back to the payer; `sender` called the refund.
    event Refunded(bytes32 indexed channelId, address indexed sender, uint128 amount);

    /// @notice The payer side asked to withdraw `amount`; it can be finalized from `finalizeAfter` on.
    event WithdrawInitiated(bytes32 indexed channelId, uint128 amount, uint40 finalizeAfter);

    /// @notice A pending withdrawal paid `amount` to the payer (possibly zero if claims used the funds meanwhile).
    event WithdrawFinalized(bytes32 indexed channelId, address indexed sender, uint128 amount);

    /*//////////////////////////////////////////////////////////////
                                 ERRORS
    //////////////////////////////////////////////////////////////*/

    /// @notice The config has a zero payer, receiver, receiverAuthorizer or token, or (in `initiateWithdraw`) the
    ///         caller is neither the payer nor the payer authorizer.
    error InvalidChannel();
    /// @notice `deposit` was called with a zero amount.
    error ZeroDeposit();
    /// @notice The deposit would push the channel balance past `type(uint128).max`.
    error DepositOverflow();
    /// @notice A voucher, claim-batch or refund signature does not come from the expected signer, or is malformed
    ///         (wrong length, high-s, bad v).
    error InvalidSignature();
    /// @notice A `claimWithSignature` row names a different receiverAuthorizer than the first row.
    error NotReceiverAuthorizer();
    /// @notice `claim` caller is neither the receiver nor the receiverAuthorizer of a row's channel.
    error NotAuthorizedToClaim();
    /// @notice `refund` caller is neither the receiver nor the receiverAuthorizer of the channel.
    error NotAuthorizedToRefund();
    /// @notice A row's `totalClaimed` is above its voucher's `maxClaimableAmount`.
    error ClaimExceedsCeiling();
    /// @notice A row's `totalClaimed` is above the channel balance.
    error ClaimExceedsBalance();
    /// @notice `initiateWithdraw` while a withdrawal is already pending.
    error WithdrawalAlreadyPending();
    /// @notice `finalizeWithdraw` with no pending withdrawal.
    error WithdrawalNotPending();
    /// @notice `finalizeWithdraw` caller is neither the payer nor the payer authorizer.
    error NotAuthorizedToFinalizeWithdraw();
    /// @notice `finalizeWithdraw` before `initiatedAt + withdrawDelay`.
    error WithdrawDelayNotElapsed();
    /// @notice `initiateWithdraw` with a zero amount.
    error NothingToWithdraw();
    /// @notice `initiateWithdraw` for more than `balance - totalClaimed`.
    error WithdrawAmountExceedsAvailable();
    /// @notice `withdrawDelay` is outside [`MIN_WITHDRAW_DELAY`, `MAX_WITHDRAW_DELAY`].
    error WithdrawDelayOutOfRange();
    /// @notice A claim call with no rows.
    error EmptyBatch();
    /// @notice The escrow's token balance did not grow by exactly the deposit amount (fee-on-transfer token,
    ///         or a collector that moved the wrong amount).
    error DepositCollectionFailed();
    /// @notice `deposit` with a zero collector address.
    error InvalidCollector();
    /// @notice `refundWithSignature` with a nonce other than the channel's current `refundNonce`.
    error InvalidRefundNonce();
    /// @notice A refund with a zero amount.
    error ZeroRefund();

    /*//////////////////////////////////////////////////////////////
                                DEPOSITS
    //////////////////////////////////////////////////////////////*/

    /// @notice Funds a channel through `collector`; the first deposit opens it, later ones top it up.
    /// @dev Anyone may call: the collector's own authorization (e.g. the payer's ERC-3009 signature bound to the
    ///      channel id) is what protects the payer. Reverts with `DepositCollectionFailed` unless the escrow's
    ///      token balance grew by exactly `amount`.
    /// @param config The channel.
    /// @param amount The amount to deposit.
    /// @param collector The `IDepositCollector` that pulls the funds.
    /// @param collectorData Opaque data forwarded to the collector.
    function deposit(ChannelConfig calldata config, uint128 amount, address collector, bytes calldata collectorData)
        external;

    /*//////////////////////////////////////////////////////////////
                            CLAIM AND SETTLE
    //////////////////////////////////////////////////////////////*/

    /// @notice Records claims for many channels; the caller must be the receiver or receiverAuthorizer of every row.
    /// @dev A row whose `totalClaimed` is not above the channel's current `totalClaimed` is skipped, so replaying a
    ///      voucher moves nothing. Rows sharing a (receiver, token) pair should be adjacent: the per-receiver total
    ///      is written once per run of equal pairs.
    /// @param voucherClaims The rows.
    function claim(VoucherClaim[] calldata voucherClaims) external;

    /// @notice Records claims authorized by one `ClaimBatch` signature of the rows' shared receiverAuthorizer;
    ///         anyone may relay it.
    /// @dev Rows are applied first and the batch signature is checked at the end; any failure reverts the call.
    /// @param voucherClaims The rows; all must have the receiverAuthorizer of the first row.
    /// @param authorizerSignature The receiverAuthorizer's signature over `getClaimBatchDigest(voucherClaims)`.
    function claimWithSignature(VoucherClaim[] calldata voucherClaims, bytes calldata authorizerSignature) external;

    /// @notice Transfers everything claimed but not yet settled for (`receiver`, `token`) to `receiver`.
    /// @dev Permissionless and idempotent: returns without a transfer or event when there is nothing to settle.
    /// @param receiver The receiver to pay.
    /// @param token The token to pay in.
    function settle(address receiver, address token) external;

    /*//////////////////////////////////////////////////////////////
                          REFUND AND WITHDRAW
    //////////////////////////////////////////////////////////////*/

    /// @notice The payer or payerAuthorizer starts a timed withdrawal of unclaimed funds.
    /// @dev Only funds already claimed on-chain are protected; the receiver side must claim outstanding vouchers
    ///      before `withdrawDelay` elapses.
    /// @param config The channel.
    /// @param amount The amount to withdraw; at most `balance - totalClaimed` now, capped again at finalization.
    function initiateWithdraw(ChannelConfig calldata config, uint128 amount) external;

    /// @notice The payer or payerAuthorizer completes a pending withdrawal once `withdrawDelay` has elapsed; funds
    ///         go to the payer, capped at what is still unclaimed.
    /// @param config The channel.
    function finalizeWithdraw(ChannelConfig calldata config) external;

    /// @notice The receiver or receiverAuthorizer returns up to `amount` of unclaimed funds to the payer.
    /// @dev Bumps `refundNonce` even when nothing is available (no transfer, no event), which invalidates any
    ///      presigned `Refund` for the old nonce. A refund shrinks a pending withdrawal by the refunded amount and
    ///      cancels it when it covers it.
    /// @param config The channel.
    /// @param amount The requested amount, capped at `balance - totalClaimed`; must be non-zero.
    function refund(ChannelConfig calldata config, uint128 amount) external;

    /// @notice Same as `refund`, authorized by the receiverAuthorizer's `Refund` signature; anyone may relay it.
    /// @param config The channel.
    /// @param amount The signed amount, capped like in `refund`.
    /// @param nonce Must equal `refundNonce(channelId)`.
    /// @param receiverAuthorizerSignature Signature over `getRefundDigest(channelId, nonce, amount)`.
    function refundWithSignature(
        ChannelConfig calldata config,
        uint128 amount,
        uint256 nonce,
        bytes calldata receiverAuthorizerSignature
    ) external;

    /*//////////////////////////////////////////////////////////////
                                 VIEWS
    //////////////////////////////////////////////////////////////*/

    /// @notice A channel's escrowed balance and cumulative claimed amount.
    function channels(bytes32 channelId) external view returns (uint128 balance, uint128 totalClaimed);

    /// @notice The nonce the next `refundWithSignature` for the channel must carry.
    function refundNonce(bytes32 channelId) external view returns (uint256);

    /// @notice The pending withdrawal of a channel; `initiatedAt` is zero when none is pending.
    function pendingWithdrawals(bytes32 channelId) external view returns (uint128 amount, uint40 initiatedAt);

    /// @notice Cumulative claimed and settled totals of a (receiver, token) pair.
    function receivers(address receiver, address token)
        external
        view
        returns (uint128 totalClaimed, uint128 totalSettled);

    /// @notice The channel id of `config`: its EIP-712 typed-data hash under this contract's domain.
    function getChannelId(ChannelConfig calldata config) external view returns (bytes32);

    /// @notice The EIP-712 digest the payer side signs for `Voucher(channelId, maxClaimableAmount)`.
    function getVoucherDigest(bytes32 channelId, uint128 maxClaimableAmount) external view returns (bytes32);

    /// @notice The EIP-712 digest the receiverAuthorizer signs for `Refund(channelId, nonce, amount)`.
    function getRefundDigest(bytes32 channelId, uint256 nonce, uint128 amount) external view returns (bytes32);

    /// @notice The EIP-712 digest the receiverAuthorizer signs for a `ClaimBatch` of these rows (defined for an
    ///         empty array too, even though claiming one reverts).
    function getClaimBatchDigest(VoucherClaim[] calldata voucherClaims) external view returns (bytes32);

    /// @notice Shortest allowed `withdrawDelay`: 15 minutes.
    function MIN_WITHDRAW_DELAY() external view returns (uint40);

    /// @notice Longest allowed `withdrawDelay`: 30 days.
    function MAX_WITHDRAW_DELAY() external view returns (uint40);

    /// @notice keccak256 of the `ChannelConfig` EIP-712 type string.
    function CHANNEL_CONFIG_TYPEHASH() external view returns (bytes32);

    /// @notice keccak256 of the `Voucher` EIP-712 type string.
    function VOUCHER_TYPEHASH() external view returns (bytes32);

    /// @notice keccak256 of the `Refund` EIP-712 type string.
    function REFUND_TYPEHASH() external view returns (bytes32);

    /// @notice keccak256 of the `ClaimEntry` EIP-712 type string.
    function CLAIM_ENTRY_TYPEHASH() external view returns (bytes32);

    /// @notice keccak256 of the `ClaimBatch` EIP-712 type string (with `ClaimEntry` appended).
    function CLAIM_BATCH_TYPEHASH() external view returns (bytes32);
}
