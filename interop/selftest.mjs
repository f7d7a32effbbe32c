#!/usr/bin/env node
// Self-test of the Node interop harness, and the first check that our escrow
// (contracts/artifacts) is compatible with the stock @x402 SDK:
//
//   1. start anvil (.tools/bin/anvil) on a free 127.0.0.1 port
//   2. chain.mjs: MockUSDC, UptoEscrow + Erc3009DepositCollector at the SDK's
//      canonical addresses, Multicall3; mint tokens to the payers
//   3. stock-server.mjs (child): @x402/express + batch-settlement server + in-process facilitator
//   4. stock-client.mjs (child), phase A: REQUESTS_A paid requests over K keys (K channels),
//      default deposit policy → channel opens and top-ups
//   4b. phase A2: REQUESTS_A2 requests from a client with a fresh store while the
//      server holds unclaimed vouchers → corrective 402 + SDK recovery, per channel
//   5. server claimAndSettle()
//   6. stock-client.mjs, phase B: REQUESTS_B more requests with a fresh client store
//      (recovery from chain), then the SDK's cooperative refund per channel (the facilitator
//      sends escrow.multicall([claimWithSignature, refundWithSignature])); the extra
//      --refund-only-key channel refunds with nothing outstanding (its claim row is a no-op)
//   7. server settle() (the refund's claim is settled separately: claimAndSettle
//      does not settle when it had nothing to claim)
//   8. reconcile on chain with viem reads: per channel totalClaimed == Σ charged
//      (server view == client view), balance == deposits − refunds, receiver
//      balance grew by Σ totalClaimed, receivers(payTo, token) claimed == settled,
//      payers lost exactly deposits − refunds, escrow holds deposits − refunds − settled.
//
//   node interop/selftest.mjs [--requests-a 84] [--requests-a2 6] [--requests-b 30] [--keys anvil:3,anvil:4,anvil:5] [--refund-only-key anvil:6]
//                             [--artifacts DIR] [--storage memory|file] [--query charge=N] [--min-topups 1] [--keep-logs]
// Exit 0 on success. Whole run bounded by --deadline seconds (default 120).

import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createPublicClient, decodeFunctionData, http } from "viem";
import { CANONICAL, deployCanonical, erc20Abi, escrowReadAbi, fund, loadArtifacts } from "./chain.mjs";
import { accountFromKey, parseArgs, sleep, toJson } from "./common.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "..");
const args = parseArgs(process.argv.slice(2));
const requestsA = Number(args["requests-a"] ?? 84);
const requestsA2 = Number(args["requests-a2"] ?? 6);
const requestsB = Number(args["requests-b"] ?? 30);
const bKeys = String(args.keys ?? "anvil:3,anvil:4,anvil:5").split(",");
// One more channel that is refunded right after claimAndSettle, with nothing outstanding.
// The stock facilitator still bundles the server's last voucher as a claim row whose
// totalClaimed equals the on-chain totalClaimed, so the escrow must treat it as a no-op
// inside multicall([claimWithSignature, refundWithSignature]). "" disables it.
const refundOnlyKey = String(args["refund-only-key"] ?? "anvil:6");
const keys = refundOnlyKey ? [...bKeys, refundOnlyKey] : bKeys;
const deadlineMs = Number(args.deadline ?? 120) * 1000;
const storageKind = args.storage ?? "memory";
const artifactsDir = args.artifacts ?? process.env.INTEROP_ARTIFACTS;
const anvilBin = process.env.ANVIL ?? join(root, ".tools/bin/anvil");

const t0 = Date.now();
const timings = {};
const mark = name => (timings[name] = Date.now() - t0);
const logDir = mkdtempSync(join(tmpdir(), "x402-interop-"));
const children = new Set();
const log = (...m) => console.error(`[selftest +${((Date.now() - t0) / 1000).toFixed(1)}s]`, ...m);

function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.unref();
    s.on("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

/** Spawns a child whose stdout/stderr go to files (and stdout also to `onLine`). */
function start(name, cmd, argv, { onLine } = {}) {
  const child = spawn(cmd, argv, { cwd: root, stdio: ["ignore", "pipe", "pipe"], env: { ...process.env } });
  children.add(child);
  const out = [];
  const err = [];
  let buf = "";
  child.stdout.on("data", d => {
    out.push(d);
    if (onLine) {
      buf += d.toString();
      let i;
      while ((i = buf.indexOf("\n")) >= 0) {
        onLine(buf.slice(0, i));
        buf = buf.slice(i + 1);
      }
    }
  });
  child.stderr.on("data", d => err.push(d));
  const done = new Promise(res =>
    child.on("exit", (code, signal) => {
      children.delete(child);
      writeFileSync(join(logDir, `${name}.out`), Buffer.concat(out));
      writeFileSync(join(logDir, `${name}.err`), Buffer.concat(err));
      res({ code, signal, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() });
    }),
  );
  return { child, done };
}

function killAll(signal = "SIGTERM") {
  for (const c of children) {
    try {
      c.kill(signal);
    } catch {}
  }
}

async function waitRpc(rpcUrl, ms) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    try {
      const r = await fetch(rpcUrl, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "eth_chainId", params: [] }),
        signal: AbortSignal.timeout(1000),
      });
      if (r.ok) return;
    } catch {}
    await sleep(100);
  }
  throw new Error(`anvil did not answer on ${rpcUrl} within ${ms} ms`);
}

async function post(url) {
  const r = await fetch(url, { method: "POST", signal: AbortSignal.timeout(30_000) });
  const j = await r.json();
  if (!j.ok) throw new Error(`${url}: ${j.error}`);
  return j.result;
}

async function runClient(name, extra) {
  const { done } = start(name, process.execPath, [join(here, "stock-client.mjs"), ...extra]);
  const r = await done;
  let summary;
  try {
    summary = JSON.parse(r.stdout.trim().split("\n").pop());
  } catch {
    throw new Error(`${name}: no JSON summary (exit ${r.code}); stderr: ${r.stderr.slice(-2000)}`);
  }
  if (r.code !== 0 || !summary.ok) {
    throw new Error(`${name} failed (exit ${r.code}): ${toJson({ failed: summary.failed, errors: summary.errors.slice(0, 10) })}`);
  }
  return summary;
}

async function main() {
  if (!existsSync(anvilBin)) throw new Error(`${anvilBin} missing: run bash scripts/tools.sh`);
  const art = loadArtifacts(artifactsDir); // fail early, with the path, if the artifacts are absent
  log(`artifacts: ${art.dir}; logs: ${logDir}`);

  // 1. anvil
  const port = await freePort();
  const rpcUrl = `http://127.0.0.1:${port}`;
  start("anvil", anvilBin, ["--host", "127.0.0.1", "--port", String(port), "--silent"]);
  await waitRpc(rpcUrl, 15_000);
  mark("anvil");

  // 2. contracts
  const deployerKey = "anvil:0";
  const addrs = await deployCanonical({ rpcUrl, deployerKey, artifactsDir, log });
  const payers = keys.map(k => accountFromKey(k).address);
  await fund({ rpcUrl, deployerKey, token: addrs.token, to: payers, amount: 1_000_000_000n });
  mark("deployed");
  log(`escrow install: ${toJson(addrs.install.escrow)}; checks ${toJson(addrs.checks)}`);

  const pc = createPublicClient({ transport: http(rpcUrl) });
  const bal = a => pc.readContract({ address: addrs.token, abi: erc20Abi, functionName: "balanceOf", args: [a] });

  // 3. server
  let ready;
  const readyP = new Promise((res, rej) => {
    ready = res;
    setTimeout(() => rej(new Error("stock-server did not print READY within 20 s")), 20_000).unref();
  });
  const serverArgs = [join(here, "stock-server.mjs"), "--rpc", rpcUrl, "--port", "0", "--token", addrs.token, "--price", "1000", "--storage", storageKind];
  if (storageKind === "file") serverArgs.push("--storage-dir", join(logDir, "channels"));
  const server = start("stock-server", process.execPath, serverArgs, {
    onLine: l => l.startsWith("READY ") && ready(JSON.parse(l.slice(6))),
  });
  server.done.then(r => ready && r.code !== null && r.code !== 0 && log(`stock-server exited ${r.code}`));
  const info = await readyP;
  mark("server");
  log(`server ${info.url} payTo ${info.payTo}`);

  const payToBefore = await bal(info.payTo);
  const payersBefore = await Promise.all(payers.map(bal));
  const escrowBefore = await bal(CANONICAL.escrow);

  // 4. phase A
  const base = ["--url", info.paid, "--rpc", rpcUrl, "--quiet", ...(args.query ? ["--query", String(args.query)] : [])];
  const common = [...base, "--keys", keys.join(",")];
  const a = await runClient("client-a", [...common, "--requests", String(requestsA), "--wire-log", join(logDir, "wire-a.jsonl")]);
  mark("clientA");
  log(`phase A: ${a.succeeded}/${a.requests} ok in ${a.elapsedMs} ms`);

  // 4b. phase A2: a client that lost its local state while the server holds unclaimed
  //     vouchers → corrective 402 (cumulative_amount_mismatch) and SDK recovery
  const a2 = await runClient("client-a2", [...common, "--requests", String(requestsA2), "--wire-log", join(logDir, "wire-a2.jsonl")]);
  mark("clientA2");
  const corrective = a2.channels.reduce((n, c) => n + c.rejected402, 0);
  log(`phase A2: ${a2.succeeded}/${a2.requests} ok, ${corrective} corrective 402s`);

  // 5. claim + settle
  const cs1 = await post(`${info.url}/admin/claim-and-settle`);
  mark("claimAndSettle");
  log(`claimAndSettle: ${toJson(cs1)}`);

  // 6. phase B + refund
  const b = await runClient("client-b", [...base, "--keys", bKeys.join(","), "--requests", String(requestsB), "--refund", "--wire-log", join(logDir, "wire-b.jsonl")]);
  if (refundOnlyKey) {
    // right after claimAndSettle this channel has nothing outstanding: the claim row in the refund is a no-op
    const b2 = await runClient("client-b2", [...base, "--keys", refundOnlyKey, "--requests", "0", "--refund", "--wire-log", join(logDir, "wire-b2.jsonl")]);
    b.channels.push(...b2.channels);
  }
  mark("clientB+refund");
  log(`phase B: ${b.succeeded}/${b.requests} ok, refunds ${toJson(b.channels.map(c => c.refunded))}`);

  // 7. settle what the refunds claimed
  // settle() throws invalid_batch_settlement_evm_nothing_to_settle when nothing was claimed (e.g. all charges 0).
  const s2 = await post(`${info.url}/admin/settle`).catch(e => {
    if (/nothing_to_settle/.test(e.message)) return { transaction: undefined, nothingToSettle: true };
    throw e;
  });
  mark("settle");

  // 8. reconcile
  const stats = await (await fetch(`${info.url}/admin/stats`)).json();
  const failures = [];
  const expect = (cond, msg) => {
    if (!cond) failures.push(msg);
  };
  const totalRequests = a.requests + a2.requests + b.requests;
  if (requestsA2 >= keys.length) expect(corrective >= keys.length, `phase A2: ${corrective} corrective 402s, expected ≥ ${keys.length} (one per channel)`);
  expect(totalRequests >= 100, `only ${totalRequests} requests`);
  expect(a.channels.length >= 3, `only ${a.channels.length} channels`);

  const channels = [];
  let sumClaimed = 0n;
  let sumDeposited = 0n;
  let sumRefunded = 0n;
  for (let i = 0; i < a.channels.length; i++) {
    const ca = a.channels[i];
    const cb = b.channels.find(c => c.channelId === ca.channelId);
    const ca2 = a2.channels.find(c => c.channelId === ca.channelId) ?? { charged: "0", deposited: "0", deposits: 0, requests: 0 };
    const sv = stats.channels[ca.channelId];
    expect(cb, `channel ${ca.channelId} missing in phase B`);
    expect(sv, `channel ${ca.channelId} unknown to the server`);
    if (!cb || !sv) continue;
    const clientCharged = BigInt(ca.charged) + BigInt(ca2.charged) + BigInt(cb.charged);
    const deposited = BigInt(ca.deposited) + BigInt(ca2.deposited) + BigInt(cb.deposited);
    const deposits = ca.deposits + ca2.deposits + cb.deposits;
    const refunded = BigInt(cb.refunded);
    const [balance, totalClaimed] = await pc.readContract({ address: CANONICAL.escrow, abi: escrowReadAbi, functionName: "channels", args: [ca.channelId] });
    const refundNonce = await pc.readContract({ address: CANONICAL.escrow, abi: escrowReadAbi, functionName: "refundNonce", args: [ca.channelId] });
    // Which escrow entry point the stock facilitator used for the refund (multicall = claim + refund in one tx).
    let refundCall;
    try {
      const tx = await pc.getTransaction({ hash: cb.refundTx });
      const outer = decodeFunctionData({ abi: art.escrow.abi, data: tx.input });
      refundCall = outer.functionName === "multicall"
        ? `multicall[${outer.args[0].map(d => decodeFunctionData({ abi: art.escrow.abi, data: d }).functionName).join(",")}]`
        : outer.functionName;
    } catch (e) {
      refundCall = `undecodable: ${e.shortMessage ?? e.message}`;
    }
    const payerIdx = payers.findIndex(p => p.toLowerCase() === ca.payer.toLowerCase());
    const payerDelta = payersBefore[payerIdx] - (await bal(ca.payer));
    const row = {
      channelId: ca.channelId,
      payer: ca.payer,
      requests: ca.requests + ca2.requests + cb.requests,
      deposits,
      deposited,
      serverCharged: BigInt(sv.charged),
      clientCharged,
      onchainTotalClaimed: totalClaimed,
      onchainBalance: balance,
      refunded,
      refundNonce,
      refundTx: cb.refundTx,
      refundCall,
      payerSpent: payerDelta,
    };
    channels.push(row);
    expect(totalClaimed === BigInt(sv.charged), `${ca.channelId}: on-chain totalClaimed ${totalClaimed} != server charged ${sv.charged}`);
    expect(clientCharged === BigInt(sv.charged), `${ca.channelId}: client charged ${clientCharged} != server charged ${sv.charged}`);
    expect(BigInt(sv.deposited) === deposited, `${ca.channelId}: server saw deposits ${sv.deposited}, client ${deposited}`);
    expect(BigInt(sv.refunded) === refunded, `${ca.channelId}: server refunded ${sv.refunded}, client ${refunded}`);
    expect(balance === deposited - refunded, `${ca.channelId}: on-chain balance ${balance} != deposited ${deposited} − refunded ${refunded}`);
    expect(refunded > 0n && balance === totalClaimed, `${ca.channelId}: after a full refund balance ${balance} should equal totalClaimed ${totalClaimed} (refunded ${refunded})`);
    expect(refundNonce === 1n, `${ca.channelId}: refundNonce ${refundNonce}, expected 1`);
    expect(payerDelta === deposited - refunded, `${ca.channelId}: payer spent ${payerDelta}, expected ${deposited - refunded}`);
    expect(deposits >= 1, `${ca.channelId}: no deposit`);
    sumClaimed += totalClaimed;
    sumDeposited += deposited;
    sumRefunded += refunded;
  }
  const topUps = channels.reduce((n, c) => n + c.deposits, 0) - channels.length;
  const minTopUps = Number(args["min-topups"] ?? 1);
  expect(topUps >= minTopUps, `${topUps} top-up deposits, expected ≥ ${minTopUps}`);

  const payToDelta = (await bal(info.payTo)) - payToBefore;
  const [recvClaimed, recvSettled] = await pc.readContract({ address: CANONICAL.escrow, abi: escrowReadAbi, functionName: "receivers", args: [info.payTo, addrs.token] });
  const escrowAfter = (await bal(CANONICAL.escrow)) - escrowBefore;
  expect(payToDelta === sumClaimed, `receiver balance grew ${payToDelta}, Σ totalClaimed ${sumClaimed}`);
  expect(recvClaimed === sumClaimed && recvSettled === sumClaimed, `receivers(payTo): claimed ${recvClaimed} settled ${recvSettled}, Σ ${sumClaimed}`);
  expect(escrowAfter === sumDeposited - sumRefunded - recvSettled, `escrow holds ${escrowAfter}, expected ${sumDeposited - sumRefunded - recvSettled}`);
  mark("reconciled");

  const result = {
    ok: failures.length === 0,
    durationMs: Date.now() - t0,
    timings,
    requests: totalRequests,
    channels: channels.length,
    deposits: channels.reduce((n, c) => n + c.deposits, 0),
    topUps,
    corrective402s: corrective,
    claimTxs: cs1.claims.map(c => c.transaction),
    settleTxs: [cs1.settle?.transaction, s2.transaction].filter(Boolean),
    totals: { claimed: sumClaimed, deposited: sumDeposited, refunded: sumRefunded, receiverGain: payToDelta, receiverSettled: recvSettled },
    perChannel: channels,
    failures,
    logs: logDir,
  };
  return result;
}

const watchdog = setTimeout(() => {
  console.error(`[selftest] deadline of ${deadlineMs / 1000} s exceeded; killing children`);
  killAll("SIGKILL");
  console.log(toJson({ ok: false, failures: ["deadline exceeded"], logs: logDir }));
  process.exit(1);
}, deadlineMs);

let code = 1;
try {
  const r = await main();
  console.log(toJson(r, 2));
  code = r.ok ? 0 : 1;
} catch (e) {
  console.error("[selftest] FAILED:", e?.stack ?? e);
  console.log(toJson({ ok: false, failures: [String(e?.message ?? e)], durationMs: Date.now() - t0, timings, logs: logDir }));
} finally {
  killAll("SIGTERM");
  const end = Date.now() + 5000;
  while (children.size && Date.now() < end) await sleep(50);
  killAll("SIGKILL");
  clearTimeout(watchdog);
  if (code === 0 && !args["keep-logs"]) rmSync(logDir, { recursive: true, force: true });
  else console.error(`[selftest] logs kept in ${logDir}`);
}
process.exit(code);
