#!/usr/bin/env node
// The stock x402 batch-settlement client: @x402/fetch wrapFetchWithPayment +
// the @x402/evm batch-settlement client scheme, with the SDK's default deposit
// policy (so it opens channels and tops them up itself). This is the reference
// peer that must be able to pay our Rust server.
//
//   node interop/stock-client.mjs --url http://127.0.0.1:PORT/paid --rpc http://127.0.0.1:8545 \
//     --keys anvil:3,anvil:4,anvil:5 --requests 120 [--refund] [--refund-amount N] \
//     [--query charge=500] [--salt 0x…32 bytes] [--deposit-multiplier M] \
//     [--timeout 120] [--wire-log FILE] [--first-status 500] [--quiet]
//
// One channel per key (the channel config is derived from the 402 offer plus the
// key and --salt). Keys run concurrently; each key's requests run one after
// another, because a server serializes a channel and answers a concurrent
// request on the same channel with `channel_busy`.
//
// Every paid response is checked: HTTP 200, PAYMENT-RESPONSE decodes with
// success=true, the network and channelId are the client's, chargedAmount ≤ the
// offered max, chargedCumulativeAmount == previous + chargedAmount, a deposit
// response carries a tx hash and its amount, and the SDK's own stored channel
// state ends at the last cumulative. With --refund each key finally calls the
// SDK's cooperative refund (BatchSettlementEvmScheme#refund(url, {amount?})).
//
// With --first-status N, each key's first request asks the server's handler to fail with N
// (`?status=N`): the answer must be N with a PAYMENT-RESPONSE receipt of the deposit made for
// it (charged 0), which the SDK takes in, so that its next request pays with a plain voucher.
//
// stdout: one JSON summary {ok, failed, requests, channels:[…], errors:[…], …}.
// Exit code: 0 only when every request and every refund passed.

import { wrapFetchWithPayment, x402Client, decodePaymentResponseHeader } from "@x402/fetch";
import { toClientEvmSigner } from "@x402/evm";
import { BatchSettlementEvmScheme, InMemoryClientChannelStorage, computeChannelId } from "@x402/evm/batch-settlement/client";
import { appendFileSync } from "node:fs";
import { createPublicClient, defineChain, http } from "viem";
import { accountFromKey, b64json, parseArgs, toJson, withTimeout } from "./common.mjs";
import { CANONICAL, escrowReadAbi } from "./chain.mjs";

const args = parseArgs(process.argv.slice(2));
const baseUrl = args.url ?? process.env.URL;
const rpcUrl = args.rpc ?? process.env.RPC_URL ?? "http://127.0.0.1:8545";
const keySpecs = String(args.keys ?? process.env.KEYS ?? "anvil:3,anvil:4,anvil:5").split(",").filter(Boolean);
const totalRequests = Number(args.requests ?? 10);
const doRefund = Boolean(args.refund);
const refundAmount = args["refund-amount"] !== undefined ? String(args["refund-amount"]) : undefined;
const salt = args.salt ?? "0x0000000000000000000000000000000000000000000000000000000000000000";
const depositMultiplier = args["deposit-multiplier"] !== undefined ? Number(args["deposit-multiplier"]) : undefined;
const timeoutMs = Number(args.timeout ?? 120) * 1000;
const requestTimeoutMs = Number(args["request-timeout"] ?? 30) * 1000;
const firstStatus = args["first-status"] !== undefined ? Number(args["first-status"]) : undefined;
const wireLog = args["wire-log"];
const quiet = Boolean(args.quiet);
const log = (...m) => {
  if (!quiet) console.error("[stock-client]", ...m);
};

if (!baseUrl) {
  console.error("stock-client: --url is required");
  process.exit(2);
}
const url = args.query ? `${baseUrl}${baseUrl.includes("?") ? "&" : "?"}${args.query}` : baseUrl;

const errors = [];
const wireSeen = new Set();
function wire(kind, data) {
  if (!wireLog || wireSeen.has(kind)) return;
  wireSeen.add(kind);
  appendFileSync(wireLog, `${toJson({ kind, ...data })}\n`);
}

/** fetch that records what goes over the wire (first sample of each kind) and bounds each request. */
function recordingFetch(stats) {
  return async (input, init) => {
    const req = input instanceof Request && !init ? input : new Request(input, init);
    const sig = req.headers.get("payment-signature");
    let payload;
    if (sig) {
      payload = b64json(sig);
      stats.paidAttempts++;
      wire(`request:${payload.payload?.type}`, { headers: Object.fromEntries(req.headers), paymentSignature: payload });
    }
    const res = await fetch(req, { signal: AbortSignal.timeout(requestTimeoutMs) });
    const required = res.headers.get("payment-required");
    if (res.status === 402) {
      const pr = required ? b64json(required) : undefined;
      if (sig) {
        stats.rejected402++;
        wire(`response:402-after-payment:${pr?.error}`, { status: 402, headers: Object.fromEntries(res.headers), paymentRequired: pr });
      } else {
        wire("response:402", { status: 402, headers: Object.fromEntries(res.headers), paymentRequired: pr });
      }
    } else if (sig) {
      const pres = res.headers.get("payment-response");
      wire(`response:${payload?.payload?.type}`, {
        status: res.status,
        headers: Object.fromEntries(res.headers),
        paymentResponse: pres ? b64json(pres) : undefined,
      });
    }
    return res;
  };
}

async function probe() {
  const res = await fetch(url, { signal: AbortSignal.timeout(requestTimeoutMs) });
  const h = res.headers.get("payment-required");
  if (res.status !== 402 || !h) throw new Error(`expected a 402 with PAYMENT-REQUIRED from ${url}, got ${res.status}`);
  const pr = b64json(h);
  const offer = pr.accepts?.find(a => a.scheme === "batch-settlement");
  if (!offer) throw new Error(`no batch-settlement offer in ${JSON.stringify(pr.accepts)}`);
  return { pr, offer };
}

async function runKey(spec, count, offer, chain) {
  const account = accountFromKey(spec);
  const publicClient = createPublicClient({ chain, transport: http(rpcUrl), pollingInterval: 50 });
  const signer = toClientEvmSigner(account, publicClient);
  const storage = new InMemoryClientChannelStorage();
  const scheme = new BatchSettlementEvmScheme(signer, {
    storage,
    salt,
    ...(depositMultiplier ? { depositPolicy: { depositMultiplier } } : {}),
  });
  const client = new x402Client()
    .register(offer.network, scheme)
    // Non-default asset: x402Client's spend controls only accept its default-asset table otherwise.
    .setSpendControls({ allowedAssets: [{ network: offer.network, asset: offer.asset }] });
  const stats = { paidAttempts: 0, rejected402: 0 };
  const payFetch = wrapFetchWithPayment(recordingFetch(stats), client);

  const channelId = computeChannelId(scheme.buildChannelConfig(offer), offer.network).toLowerCase();
  const ch = {
    payer: account.address,
    channelId,
    requests: 0,
    ok: 0,
    failed: 0,
    charged: "0",
    deposits: 0,
    deposited: "0",
    refunded: "0",
    refundTx: undefined,
    lastCumulative: undefined,
  };
  const max = BigInt(offer.amount);
  let charged = 0n;
  let deposited = 0n;
  let prev; // previous chargedCumulativeAmount seen for this channel
  const fail = (i, msg) => {
    ch.failed++;
    errors.push({ payer: account.address, request: i, error: msg });
    log(`${account.address} #${i}: ${msg}`);
  };

  for (let i = 0; i < count; i++) {
    ch.requests++;
    let res;
    const failing = i === 0 && firstStatus !== undefined;
    const target = failing ? `${url}${url.includes("?") ? "&" : "?"}status=${firstStatus}` : url;
    try {
      res = await payFetch(target, { method: "GET" });
    } catch (e) {
      fail(i, `fetch threw: ${e?.message ?? e}`);
      continue;
    }
    const body = await res.text();
    if (failing) {
      const h = res.headers.get("payment-response");
      const receipt = h ? decodePaymentResponseHeader(h) : undefined;
      ch.failedFirst = { status: res.status, receipt };
      const problems = [];
      if (res.status !== firstStatus) problems.push(`status ${res.status} != ${firstStatus}`);
      if (!receipt) problems.push("no PAYMENT-RESPONSE receipt for the deposit");
      else {
        if (receipt.success !== true) problems.push(`receipt success=${receipt.success}`);
        if (receipt.extra?.chargedAmount !== "0") problems.push(`receipt charged ${receipt.extra?.chargedAmount}`);
        if (!/^0x[0-9a-fA-F]{64}$/.test(receipt.transaction ?? "")) problems.push(`receipt tx ${receipt.transaction}`);
      }
      if (problems.length) fail(i, problems.join("; "));
      else {
        ch.ok++;
        ch.deposits++;
        deposited += BigInt(receipt.amount);
        prev = BigInt(receipt.extra.channelState.chargedCumulativeAmount);
      }
      continue;
    }
    if (res.status !== 200) {
      const pr = res.headers.get("payment-required");
      fail(i, `status ${res.status}${pr ? ` error=${b64json(pr).error}` : ""} body=${body.slice(0, 200)}`);
      continue;
    }
    const h = res.headers.get("payment-response");
    if (!h) {
      fail(i, "200 without PAYMENT-RESPONSE");
      continue;
    }
    let pr;
    try {
      pr = decodePaymentResponseHeader(h);
    } catch (e) {
      fail(i, `PAYMENT-RESPONSE does not decode: ${e.message}`);
      continue;
    }
    const cs = pr.extra?.channelState;
    const problems = [];
    if (pr.success !== true) problems.push(`success=${pr.success}`);
    if (pr.network !== offer.network) problems.push(`network ${pr.network}`);
    if (!pr.payer || pr.payer.toLowerCase() !== account.address.toLowerCase()) problems.push(`payer ${pr.payer}`);
    if (!cs || String(cs.channelId).toLowerCase() !== channelId) problems.push(`channelId ${cs?.channelId} != ${channelId}`);
    if (pr.extra?.chargedAmount === undefined || !/^\d+$/.test(pr.extra.chargedAmount)) problems.push(`chargedAmount ${pr.extra?.chargedAmount}`);
    if (!problems.length) {
      const amt = BigInt(pr.extra.chargedAmount);
      const cum = BigInt(cs.chargedCumulativeAmount);
      if (amt > max) problems.push(`chargedAmount ${amt} > max ${max}`);
      const base = prev ?? cum - amt; // first sighting: a reused channel may start above 0
      if (prev === undefined && base < 0n) problems.push(`cumulative ${cum} < charged ${amt}`);
      if (cum !== base + amt) problems.push(`cumulative ${cum} != previous ${base} + charged ${amt}`);
      let reqCharge;
      try {
        reqCharge = JSON.parse(body).requestedCharge;
      } catch {}
      if (typeof reqCharge === "string" && /^\d+$/.test(reqCharge) && BigInt(reqCharge) !== amt) {
        problems.push(`server handler asked ${reqCharge}, chargedAmount ${amt}`);
      }
      if (BigInt(cs.balance) < cum) problems.push(`balance ${cs.balance} < cumulative ${cum}`);
      if (pr.transaction) {
        if (!/^0x[0-9a-fA-F]{64}$/.test(pr.transaction)) problems.push(`deposit tx ${pr.transaction}`);
        if (!/^\d+$/.test(pr.amount ?? "") || BigInt(pr.amount) <= 0n) problems.push(`deposit amount ${pr.amount}`);
      } else if (pr.amount !== "" && pr.amount !== undefined) {
        problems.push(`voucher response amount ${JSON.stringify(pr.amount)} (expected "")`);
      }
      if (!problems.length) {
        charged += amt;
        prev = cum;
        if (pr.transaction) {
          ch.deposits++;
          deposited += BigInt(pr.amount);
        }
      }
    }
    if (problems.length) fail(i, problems.join("; "));
    else ch.ok++;
  }

  ch.charged = charged.toString();
  ch.deposited = deposited.toString();
  ch.lastCumulative = prev?.toString();
  ch.paidAttempts = stats.paidAttempts;
  ch.rejected402 = stats.rejected402;

  // The SDK's own record must agree with what the server told us.
  const stored = await storage.get(channelId);
  ch.sdkState = stored;
  if (prev !== undefined && stored?.chargedCumulativeAmount !== prev.toString()) {
    errors.push({ payer: account.address, error: `SDK storage chargedCumulativeAmount ${stored?.chargedCumulativeAmount} != last seen ${prev}` });
  }

  if (doRefund) {
    try {
      const r = await withTimeout(scheme.refund(url, { fetch: recordingFetch(stats), ...(refundAmount ? { amount: refundAmount } : {}) }), requestTimeoutMs, "refund");
      ch.refundResponse = r;
      if (!r?.success) throw new Error(`refund not successful: ${toJson(r)}`);
      if (!/^0x[0-9a-fA-F]{64}$/.test(r.transaction ?? "")) throw new Error(`refund tx ${r.transaction}`);
      ch.refunded = String(r.amount ?? "0");
      ch.refundTx = r.transaction;
      wire("refund:result", { settleResponse: r });
    } catch (e) {
      errors.push({ payer: account.address, error: `refund failed: ${e?.message ?? e}` });
      log(`${account.address} refund failed:`, e?.stack ?? e);
    }
  }

  try {
    const [balance, totalClaimed] = await publicClient.readContract({ address: CANONICAL.escrow, abi: escrowReadAbi, functionName: "channels", args: [channelId] });
    ch.onchain = { balance: balance.toString(), totalClaimed: totalClaimed.toString() };
  } catch (e) {
    ch.onchain = { error: e?.shortMessage ?? String(e) };
  }
  return ch;
}

async function main() {
  const t0 = Date.now();
  const { pr, offer } = await probe();
  wire("response:402:probe", { paymentRequired: pr });
  const chainId = Number(offer.network.split(":")[1]);
  const chain = defineChain({
    id: chainId,
    name: `local-${chainId}`,
    nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
    rpcUrls: { default: { http: [rpcUrl] } },
  });
  const k = keySpecs.length;
  const counts = keySpecs.map((_, i) => Math.floor(totalRequests / k) + (i < totalRequests % k ? 1 : 0));
  log(`paying ${url} ${totalRequests}× with ${k} keys (max ${offer.amount} of ${offer.asset})`);

  let channels;
  try {
    channels = await withTimeout(Promise.all(keySpecs.map((s, i) => runKey(s, counts[i], offer, chain))), timeoutMs, "client run");
  } catch (e) {
    errors.push({ error: e?.message ?? String(e) });
    channels = [];
  }
  const failed = channels.reduce((n, c) => n + c.failed, 0);
  const requests = channels.reduce((n, c) => n + c.requests, 0);
  const summary = {
    ok: errors.length === 0 && failed === 0 && requests === totalRequests,
    failed,
    requests,
    succeeded: channels.reduce((n, c) => n + c.ok, 0),
    elapsedMs: Date.now() - t0,
    network: offer.network,
    asset: offer.asset,
    max: offer.amount,
    url,
    channels,
    errors,
  };
  console.log(toJson(summary));
  process.exit(summary.ok ? 0 : 1);
}

main().catch(e => {
  console.log(toJson({ ok: false, failed: 0, requests: 0, channels: [], errors: [{ error: e?.stack ?? String(e) }] }));
  process.exit(1);
});
