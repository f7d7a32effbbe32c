// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {Erc3009DepositCollector} from "../../src/Erc3009DepositCollector.sol";
import {IUptoEscrow} from "../../src/interfaces/IUptoEscrow.sol";
import {MockUSDC} from "../../src/mocks/MockUSDC.sol";
import {UptoEscrow} from "../../src/UptoEscrow.sol";
import {PullDepositCollector} from "../mocks/PullDepositCollector.sol";
import {vm} from "../utils/Vm.sol";

/// @notice Drives the escrow through random sequences of every entry point over six channels (three payers, one of
///         them signing its own vouchers, times two receivers) and keeps ghost totals of what moved where.
/// @dev Handler functions never revert on purpose: inputs are bounded into the useful range, and calls that the
///      escrow is expected to reject are made with try/catch. Anything that contradicts the model (a replay that
///      pays, a refund that moves the wrong amount, a claim that lowers `totalClaimed`) is recorded in
///      `violation`, which the suite asserts is empty: a revert here would only be counted, not reported.
contract EscrowHandler {
    uint256 internal constant CHANNELS = 6;
    uint256 internal constant RECEIVERS = 2;
    uint40 internal constant DELAY = 15 minutes;
    uint128 internal constant MAX_DEPOSIT = 1e15;

    UptoEscrow public immutable escrow;
    MockUSDC public immutable usdc;
    PullDepositCollector internal immutable pullCollector;
    Erc3009DepositCollector internal immutable erc3009Collector;

    IUptoEscrow.ChannelConfig[CHANNELS] internal configs;
    bytes32[CHANNELS] public channelIds;
    uint256[CHANNELS] internal voucherKeys; // payer authorizer's key, or the payer's own when no authorizer is set
    uint256[CHANNELS] internal payerKeys;
    address[RECEIVERS] public receivers;
    uint256[RECEIVERS] internal receiverAuthKeys;

    // Ghost accounting, per channel and per receiver.
    uint256[CHANNELS] public ghostDeposited;
    uint256[CHANNELS] public ghostRefunded;
    uint256[CHANNELS] public ghostWithdrawn;
    uint256[CHANNELS] public ghostMaxCeiling; // highest voucher ceiling any row carried
    uint256[CHANNELS] public ghostLastClaimed; // totalClaimed as last observed by the handler
    uint256[RECEIVERS] public ghostSettled;

    // The last applied row per channel, replayed by `replayClaim`.
    mapping(uint256 channel => IUptoEscrow.VoucherClaim) internal lastRow;
    mapping(uint256 channel => bool) internal hasLastRow;

    uint256 internal saltCounter;
    string public violation;
    mapping(string action => uint256) public calls;

    constructor() {
        escrow = new UptoEscrow();
        usdc = new MockUSDC();
        pullCollector = new PullDepositCollector();
        erc3009Collector = new Erc3009DepositCollector(address(escrow));

        for (uint256 r; r < RECEIVERS; ++r) {
            receivers[r] = vm.addr(0xE000 + r);
            receiverAuthKeys[r] = 0xEA00 + r;
        }
        for (uint256 c; c < CHANNELS; ++c) {
            uint256 p = c / RECEIVERS;
            uint256 r = c % RECEIVERS;
            payerKeys[c] = 0xA000 + p;
            // Payer 2 has no authorizer: it signs vouchers itself.
            voucherKeys[c] = p == 2 ? payerKeys[c] : 0xB000 + p;
            configs[c] = IUptoEscrow.ChannelConfig({
                payer: vm.addr(payerKeys[c]),
                payerAuthorizer: p == 2 ? address(0) : vm.addr(voucherKeys[c]),
                receiver: receivers[r],
                receiverAuthorizer: vm.addr(receiverAuthKeys[r]),
                token: address(usdc),
                withdrawDelay: DELAY,
                salt: bytes32(c)
            });
            channelIds[c] = escrow.getChannelId(configs[c]);
            address payer = configs[c].payer;
            vm.prank(payer);
            usdc.approve(address(pullCollector), type(uint256).max);
        }
    }

    /*//////////////////////////////////////////////////////////////
                                 ACTIONS
    //////////////////////////////////////////////////////////////*/

    function deposit(uint256 seed, uint128 amount) external {
        uint256 c = seed % CHANNELS;
        amount = uint128(_bound(amount, 1, MAX_DEPOSIT));
        IUptoEscrow.ChannelConfig memory config = configs[c];
        usdc.mint(config.payer, amount);
        uint256 before = usdc.balanceOf(address(escrow));
        if ((seed >> 8) % 2 == 0) {
            vm.prank(config.payer);
            try escrow.deposit(config, amount, address(pullCollector), "") {}
            catch {
                _fail("pull deposit reverted");
                return;
            }
            ++calls["deposit (pull)"];
        } else {
            try escrow.deposit(config, amount, address(erc3009Collector), _erc3009Data(c, amount)) {}
            catch {
                _fail("ERC-3009 deposit reverted");
                return;
            }
            ++calls["deposit (ERC-3009)"];
        }
        ghostDeposited[c] += amount;
        if (usdc.balanceOf(address(escrow)) != before + amount) _fail("deposit moved a different amount");
        _observe(c);
    }

    /// @dev Claims on up to three channels of one receiver, directly or relayed. Totals land anywhere from below the
    ///      current claim (no-op) to above the balance or the ceiling (the whole batch must then revert).
    function claim(uint256 seed, uint128 total, uint128 extra, bool relayed) external {
        uint256 r = seed % RECEIVERS;
        uint256 n = 1 + (seed >> 8) % 3;
        IUptoEscrow.VoucherClaim[] memory rows = new IUptoEscrow.VoucherClaim[](n);
        uint256[] memory chans = new uint256[](n);
        bool expectFailure;
        for (uint256 i; i < n; ++i) {
            chans[i] = r + RECEIVERS * ((seed >> (16 + 8 * i)) % (CHANNELS / RECEIVERS));
            bool fails;
            (rows[i], fails) = _randomRow(chans[i], seed >> (40 + i), uint256(total) + i, extra);
            expectFailure = expectFailure || fails;
        }
        // Rows repeating a channel see the earlier row's effect; keep the model simple by not predicting them.
        bool repeats = n > 1 && (chans[0] == chans[1] || (n > 2 && (chans[0] == chans[2] || chans[1] == chans[2])));

        bool ok;
        if (relayed) {
            bytes memory signature = _sign(receiverAuthKeys[r], escrow.getClaimBatchDigest(rows));
            try escrow.claimWithSignature(rows, signature) {
                ok = true;
            } catch {}
            ++calls[ok ? "claimWithSignature" : "claimWithSignature (reverted)"];
        } else {
            vm.prank(configs[chans[0]].receiverAuthorizer);
            try escrow.claim(rows) {
                ok = true;
            } catch {}
            ++calls[ok ? "claim" : "claim (reverted)"];
        }
        if (!repeats && ok == expectFailure) _fail("claim outcome differs from the model");
        for (uint256 i; i < n; ++i) {
            if (ok) {
                uint256 c = chans[i];
                if (rows[i].voucher.maxClaimableAmount > ghostMaxCeiling[c]) {
                    ghostMaxCeiling[c] = rows[i].voucher.maxClaimableAmount;
                }
                (, uint128 claimedNow) = escrow.channels(channelIds[c]);
                if (claimedNow == rows[i].totalClaimed) {
                    lastRow[c] = rows[i];
                    hasLastRow[c] = true;
                }
            }
            _observe(chans[i]);
        }
    }

    /// @dev No voucher pays twice: re-submitting an applied row changes nothing.
    function replayClaim(uint256 seed) external {
        uint256 c = seed % CHANNELS;
        if (!hasLastRow[c]) return;
        IUptoEscrow.VoucherClaim[] memory rows = new IUptoEscrow.VoucherClaim[](1);
        rows[0] = lastRow[c];
        (uint128 balanceBefore, uint128 claimedBefore) = escrow.channels(channelIds[c]);
        (uint128 receiverBefore,) = escrow.receivers(configs[c].receiver, address(usdc));
        vm.prank(configs[c].receiver);
        try escrow.claim(rows) {}
        catch {
            _fail("replaying an applied voucher reverted");
            return;
        }
        (uint128 balanceAfter, uint128 claimedAfter) = escrow.channels(channelIds[c]);
        (uint128 receiverAfter,) = escrow.receivers(configs[c].receiver, address(usdc));
        if (balanceAfter != balanceBefore || claimedAfter != claimedBefore || receiverAfter != receiverBefore) {
            _fail("a replayed voucher moved funds");
        }
        ++calls["replayClaim"];
    }

    function settle(uint256 seed) external {
        uint256 r = seed % RECEIVERS;
        (uint128 claimed, uint128 settled) = escrow.receivers(receivers[r], address(usdc));
        uint256 before = usdc.balanceOf(receivers[r]);
        try escrow.settle(receivers[r], address(usdc)) {}
        catch {
            _fail("settle reverted");
            return;
        }
        uint256 paid = usdc.balanceOf(receivers[r]) - before;
        if (paid != claimed - settled) _fail("settle paid a different amount than was due");
        ghostSettled[r] += paid;
        ++calls["settle"];
    }

    function refund(uint256 seed, uint128 amount, bool relayed) external {
        uint256 c = seed % CHANNELS;
        IUptoEscrow.ChannelConfig memory config = configs[c];
        (uint128 balance, uint128 claimed) = escrow.channels(channelIds[c]);
        (uint128 pendingBefore,) = escrow.pendingWithdrawals(channelIds[c]);
        // Half the requests ask for more than is unclaimed, to exercise the cap.
        amount = (seed >> 16) % 2 == 0
            ? uint128(_bound(amount, 1, balance - claimed))
            : uint128(_bound(amount, uint256(balance - claimed) + 1, uint256(balance) + 1e6));
        uint256 nonce = escrow.refundNonce(channelIds[c]);
        uint256 before = usdc.balanceOf(config.payer);
        if (relayed) {
            bytes memory signature =
                _sign(receiverAuthKeys[c % RECEIVERS], escrow.getRefundDigest(channelIds[c], nonce, amount));
            try escrow.refundWithSignature(config, amount, nonce, signature) {}
            catch {
                _fail("refundWithSignature reverted");
                return;
            }
            ++calls["refundWithSignature"];
        } else {
            vm.prank(config.receiverAuthorizer);
            try escrow.refund(config, amount) {}
            catch {
                _fail("refund reverted");
                return;
            }
            ++calls["refund"];
        }
        uint256 refunded = usdc.balanceOf(config.payer) - before;
        uint256 available = balance - claimed;
        if (refunded != (amount < available ? amount : available)) _fail("refund not capped to unclaimed");
        if (escrow.refundNonce(channelIds[c]) != nonce + 1) _fail("refund did not advance the nonce");
        (uint128 pendingAfter,) = escrow.pendingWithdrawals(channelIds[c]);
        uint256 expectedPending = pendingBefore > refunded ? pendingBefore - refunded : 0;
        if (pendingAfter != expectedPending) _fail("refund did not shrink the pending withdrawal");
        ghostRefunded[c] += refunded;
        _observe(c);
    }

    function initiateWithdraw(uint256 seed, uint128 amount) external {
        uint256 c = seed % CHANNELS;
        (uint128 balance, uint128 claimed) = escrow.channels(channelIds[c]);
        (uint128 pending,) = escrow.pendingWithdrawals(channelIds[c]);
        if (balance == claimed || pending != 0) return;
        amount = uint128(_bound(amount, 1, balance - claimed));
        IUptoEscrow.ChannelConfig memory config = configs[c];
        // The payer authorizer may act for the payer when there is one.
        vm.prank((seed >> 8) % 2 == 0 || config.payerAuthorizer == address(0) ? config.payer : config.payerAuthorizer);
        try escrow.initiateWithdraw(config, amount) {}
        catch {
            _fail("initiateWithdraw reverted");
            return;
        }
        ++calls["initiateWithdraw"];
    }

    function finalizeWithdraw(uint256 seed, uint32 wait) external {
        uint256 c = seed % CHANNELS;
        (uint128 pending, uint40 initiatedAt) = escrow.pendingWithdrawals(channelIds[c]);
        if (pending == 0) return;
        vm.warp(block.timestamp + _bound(wait, 0, 2 * DELAY));
        IUptoEscrow.ChannelConfig memory config = configs[c];
        (uint128 balance, uint128 claimed) = escrow.channels(channelIds[c]);
        uint256 before = usdc.balanceOf(config.payer);
        vm.prank(config.payer);
        try escrow.finalizeWithdraw(config) {
            uint256 paid = usdc.balanceOf(config.payer) - before;
            uint256 available = balance - claimed;
            if (paid != (pending < available ? pending : available)) _fail("withdrawal paid the wrong amount");
            ghostWithdrawn[c] += paid;
            ++calls["finalizeWithdraw"];
        } catch {
            if (block.timestamp >= uint256(initiatedAt) + DELAY) _fail("finalize reverted after the delay");
            ++calls["finalizeWithdraw (too early)"];
        }
        _observe(c);
    }

    function warp(uint32 secondsForward) external {
        vm.warp(block.timestamp + _bound(secondsForward, 1, 2 * DELAY));
        ++calls["warp"];
    }

    /*//////////////////////////////////////////////////////////////
                                  VIEWS
    //////////////////////////////////////////////////////////////*/

    function channelConfig(uint256 c) external view returns (IUptoEscrow.ChannelConfig memory) {
        return configs[c];
    }

    function channelCount() external pure returns (uint256) {
        return CHANNELS;
    }

    function receiverCount() external pure returns (uint256) {
        return RECEIVERS;
    }

    /*//////////////////////////////////////////////////////////////
                                 HELPERS
    //////////////////////////////////////////////////////////////*/

    /// @dev Records the claimed total the handler now sees and flags any decrease.
    function _observe(uint256 c) internal {
        (, uint128 claimed) = escrow.channels(channelIds[c]);
        if (claimed < ghostLastClaimed[c]) _fail("totalClaimed decreased");
        ghostLastClaimed[c] = claimed;
    }

    function _fail(string memory message) internal {
        if (bytes(violation).length == 0) violation = message;
    }

    /// @dev A row for channel `c`: mostly a valid total between the current claim and the balance; one in eight
    ///      goes past the balance and one in sixteen carries a ceiling below its total. Returns whether the row must
    ///      make its batch revert.
    function _randomRow(uint256 c, uint256 seed, uint256 total, uint256 extra)
        internal
        view
        returns (IUptoEscrow.VoucherClaim memory row, bool fails)
    {
        (uint128 balance, uint128 claimed) = escrow.channels(channelIds[c]);
        uint128 t = uint128(_bound(total, claimed, balance));
        if (seed % 8 == 0) t = balance + 1;
        uint128 ceiling = uint128(_bound(uint256(t) + extra, t, type(uint128).max));
        if ((seed >> 8) % 16 == 0 && t > 0) ceiling = t - 1;
        row = _signedRow(c, ceiling, t);
        fails = t > claimed && (t > ceiling || t > balance);
    }

    function _signedRow(uint256 c, uint128 ceiling, uint128 total)
        internal
        view
        returns (IUptoEscrow.VoucherClaim memory)
    {
        bytes memory signature = _sign(voucherKeys[c], escrow.getVoucherDigest(channelIds[c], ceiling));
        return IUptoEscrow.VoucherClaim({
            voucher: IUptoEscrow.Voucher({channel: configs[c], maxClaimableAmount: ceiling}),
            signature: signature,
            totalClaimed: total
        });
    }

    function _erc3009Data(uint256 c, uint256 amount) internal returns (bytes memory) {
        uint256 salt = ++saltCounter;
        bytes32 nonce = keccak256(abi.encode(channelIds[c], salt));
        bytes32 structHash = keccak256(
            abi.encode(
                usdc.RECEIVE_WITH_AUTHORIZATION_TYPEHASH(),
                configs[c].payer,
                address(erc3009Collector),
                amount,
                0,
                type(uint256).max,
                nonce
            )
        );
        bytes32 digest = keccak256(abi.encodePacked("\x19\x01", usdc.DOMAIN_SEPARATOR(), structHash));
        return abi.encode(uint256(0), type(uint256).max, salt, _sign(payerKeys[c], digest));
    }

    function _sign(uint256 key, bytes32 digest) internal pure returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
        return abi.encodePacked(r, s, v);
    }

    function _bound(uint256 x, uint256 min, uint256 max) internal pure returns (uint256) {
        if (max <= min) return min;
        if (x >= min && x <= max) return x;
        return min + (x % (max - min + 1));
    }
}
