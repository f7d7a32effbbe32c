#!/usr/bin/env node
// Installs the project's contracts on a local anvil chain at the addresses the
// stock @x402/evm SDK hard-codes, so that the unmodified TypeScript
// batch-settlement server, facilitator and client can run against them.
//
// Library:
//   import { deployCanonical, fund, CANONICAL } from "./chain.mjs";
//   const addrs = await deployCanonical({ rpcUrl, deployerKey });
//   await fund({ rpcUrl, deployerKey, token: addrs.token, to: [a, b], amount: 10n ** 12n });
//
// CLI:
//   node interop/chain.mjs deploy --rpc http://127.0.0.1:8545 --key 0x…|anvil:N [--artifacts DIR]
//     → prints {"token","escrow","collector","multicall3","chainId"} as JSON
//   node interop/chain.mjs fund --rpc … --key 0x… --token 0x… --to 0xA,0xB [--amount 1000000000000]
//   node interop/chain.mjs verify --rpc … [--token 0x…]
//
// How the install works (anvil only): each contract is deployed normally, its
// runtime code is read back with eth_getCode and written to the canonical
// address with anvil_setCode. Storage written by a constructor would not move
// with the code, so the deploy transaction is traced (prestateTracer, diffMode)
// and every storage slot it set on the new contract is copied with
// anvil_setStorageAt as well; for UptoEscrow and the collector that set is
// expected to be empty (immutables and ShortStrings live in the code). The
// collector is constructed with the *canonical* escrow address because that
// address is an immutable baked into its runtime code.

import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import {
  createPublicClient,
  createWalletClient,
  defineChain,
  getAddress,
  hashTypedData,
  http,
  parseAbi,
  zeroAddress,
} from "viem";
import { accountFromKey, parseArgs, toJson } from "./common.mjs";

const here = dirname(fileURLToPath(import.meta.url));
export const DEFAULT_ARTIFACTS = resolve(here, "../contracts/artifacts");

/** Addresses hard-coded in @x402/evm 2.27.0 (batch-settlement constants) and viem (multicall3). */
export const CANONICAL = Object.freeze({
  escrow: "0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003",
  collector: "0x4020806089470a89826cB9fB1f4059150b550004",
  multicall3: "0xcA11bde05977b3631167028862bE2a173976CA11",
});

export const ESCROW_DOMAIN = Object.freeze({ name: "x402 Batch Settlement", version: "1" });
export const TOKEN_DOMAIN = Object.freeze({ name: "USDC", version: "2" });

/** Minimal read ABI for the escrow, matching x402BatchSettlement. */
export const escrowReadAbi = parseAbi([
  "function eip712Domain() view returns (bytes1 fields, string name, string version, uint256 chainId, address verifyingContract, bytes32 salt, uint256[] extensions)",
  "function getChannelId((address payer,address payerAuthorizer,address receiver,address receiverAuthorizer,address token,uint40 withdrawDelay,bytes32 salt) config) view returns (bytes32)",
  "function channels(bytes32) view returns (uint128 balance, uint128 totalClaimed)",
  "function receivers(address receiver, address token) view returns (uint128 totalClaimed, uint128 totalSettled)",
  "function refundNonce(bytes32) view returns (uint256)",
]);

export const erc20Abi = parseAbi([
  "function balanceOf(address) view returns (uint256)",
  "function decimals() view returns (uint8)",
  "function mint(address to, uint256 amount)",
  "function eip712Domain() view returns (bytes1 fields, string name, string version, uint256 chainId, address verifyingContract, bytes32 salt, uint256[] extensions)",
]);

const channelConfigTypes = {
  ChannelConfig: [
    { name: "payer", type: "address" },
    { name: "payerAuthorizer", type: "address" },
    { name: "receiver", type: "address" },
    { name: "receiverAuthorizer", type: "address" },
    { name: "token", type: "address" },
    { name: "withdrawDelay", type: "uint40" },
    { name: "salt", type: "bytes32" },
  ],
};

/** Local EIP-712 channel id: typed hash of ChannelConfig under the canonical escrow domain. */
export function localChannelId(config, chainId) {
  return hashTypedData({
    domain: { ...ESCROW_DOMAIN, chainId, verifyingContract: CANONICAL.escrow },
    types: channelConfigTypes,
    primaryType: "ChannelConfig",
    message: config,
  });
}

export function loadArtifacts(dir = process.env.INTEROP_ARTIFACTS || DEFAULT_ARTIFACTS) {
  const load = name => {
    const file = join(dir, `${name}.json`);
    let j;
    try {
      j = JSON.parse(readFileSync(file, "utf8"));
    } catch (e) {
      throw new Error(`cannot read artifact ${file}: ${e.message}`);
    }
    const bytecode = j.bytecode?.object ?? j.bytecode;
    if (!Array.isArray(j.abi) || typeof bytecode !== "string" || bytecode.length < 4) {
      throw new Error(`artifact ${file} lacks abi or bytecode.object`);
    }
    return { abi: j.abi, bytecode: bytecode.startsWith("0x") ? bytecode : `0x${bytecode}` };
  };
  return {
    escrow: load("UptoEscrow"),
    collector: load("Erc3009DepositCollector"),
    token: load("MockUSDC"),
    dir,
  };
}

/** viem's bundled Multicall3 creation code (not exported by viem's package map, so loaded by path). */
async function multicall3CreationCode() {
  const require = createRequire(import.meta.url);
  const viemDir = dirname(require.resolve("viem/package.json"));
  const mod = await import(pathToFileURL(join(viemDir, "_esm/constants/contracts.js")).href);
  if (!mod.multicall3Bytecode) throw new Error("viem no longer bundles multicall3Bytecode");
  return mod.multicall3Bytecode;
}

export async function clients(rpcUrl, key) {
  const probe = createPublicClient({ transport: http(rpcUrl) });
  const chainId = await probe.getChainId();
  const chain = defineChain({
    id: chainId,
    name: `local-${chainId}`,
    nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
    rpcUrls: { default: { http: [rpcUrl] } },
  });
  const publicClient = createPublicClient({ chain, transport: http(rpcUrl), pollingInterval: 50 });
  const wallet = key
    ? createWalletClient({ account: accountFromKey(key), chain, transport: http(rpcUrl), pollingInterval: 50 })
    : undefined;
  return { chain, chainId, publicClient, wallet };
}

async function deployRaw({ publicClient, wallet }, { abi, bytecode, args = [] }) {
  const hash = await wallet.deployContract({ abi, bytecode, args });
  const receipt = await publicClient.waitForTransactionReceipt({ hash, timeout: 30_000 });
  if (receipt.status !== "success" || !receipt.contractAddress) {
    throw new Error(`deploy reverted (tx ${hash})`);
  }
  return { address: getAddress(receipt.contractAddress), hash };
}

/**
 * Storage slots a deploy transaction wrote on the created contract. Uses the
 * prestate tracer in diff mode; returns null when the node cannot trace.
 */
async function constructorStorage(publicClient, hash, address) {
  try {
    const diff = await publicClient.request({
      method: "debug_traceTransaction",
      params: [hash, { tracer: "prestateTracer", tracerConfig: { diffMode: true } }],
    });
    const post = diff?.post ?? {};
    const key = Object.keys(post).find(k => k.toLowerCase() === address.toLowerCase());
    return key ? (post[key].storage ?? {}) : {};
  } catch {
    return null;
  }
}

async function moveTo(ctx, deployed, target) {
  const { publicClient } = ctx;
  const code = await publicClient.getCode({ address: deployed.address });
  if (!code || code === "0x") throw new Error(`no runtime code at ${deployed.address}`);
  await publicClient.request({ method: "anvil_setCode", params: [target, code] });
  const storage = await constructorStorage(publicClient, deployed.hash, deployed.address);
  const copied = [];
  for (const [slot, value] of Object.entries(storage ?? {})) {
    await publicClient.request({ method: "anvil_setStorageAt", params: [target, slot, value] });
    copied.push(slot);
  }
  return { from: deployed.address, codeBytes: (code.length - 2) / 2, storageSlotsCopied: copied, traced: storage !== null };
}

/**
 * Deploys MockUSDC (normal address), installs UptoEscrow, Erc3009DepositCollector
 * and Multicall3 at their canonical addresses, then verifies the install.
 */
export async function deployCanonical({ rpcUrl, deployerKey, artifactsDir, log = () => {} }) {
  const art = loadArtifacts(artifactsDir);
  const ctx = await clients(rpcUrl, deployerKey);

  const token = await deployRaw(ctx, art.token);
  log(`MockUSDC deployed at ${token.address}`);

  const escrowTmp = await deployRaw(ctx, art.escrow);
  const escrowMove = await moveTo(ctx, escrowTmp, CANONICAL.escrow);
  log(`UptoEscrow ${escrowTmp.address} → ${CANONICAL.escrow} (${JSON.stringify(escrowMove.storageSlotsCopied)} slots copied)`);

  const collectorTmp = await deployRaw(ctx, { ...art.collector, args: [CANONICAL.escrow] });
  const collectorMove = await moveTo(ctx, collectorTmp, CANONICAL.collector);
  log(`Erc3009DepositCollector ${collectorTmp.address} → ${CANONICAL.collector}`);

  let multicallMove = { skipped: true };
  const existing = await ctx.publicClient.getCode({ address: CANONICAL.multicall3 });
  if (!existing || existing === "0x") {
    const mc = await deployRaw(ctx, { abi: [], bytecode: await multicall3CreationCode() });
    multicallMove = await moveTo(ctx, mc, CANONICAL.multicall3);
    log(`Multicall3 ${mc.address} → ${CANONICAL.multicall3}`);
  }

  const checks = await verifyInstall({ rpcUrl, token: token.address, collectorAbi: art.collector.abi });
  return {
    token: token.address,
    escrow: CANONICAL.escrow,
    collector: CANONICAL.collector,
    multicall3: CANONICAL.multicall3,
    chainId: ctx.chainId,
    install: { escrow: escrowMove, collector: collectorMove, multicall3: multicallMove },
    checks,
  };
}

/** Throws unless the canonical install answers like x402BatchSettlement would. */
export async function verifyInstall({ rpcUrl, token, collectorAbi }) {
  const { publicClient, chainId } = await clients(rpcUrl);
  const fail = msg => {
    throw new Error(`install check failed: ${msg}`);
  };
  const checks = {};

  const dom = await publicClient.readContract({ address: CANONICAL.escrow, abi: escrowReadAbi, functionName: "eip712Domain" });
  const [, name, version, domChainId, verifyingContract] = dom;
  if (name !== ESCROW_DOMAIN.name || version !== ESCROW_DOMAIN.version) fail(`escrow domain ${name}/${version}`);
  if (Number(domChainId) !== chainId) fail(`escrow domain chainId ${domChainId} != ${chainId}`);
  if (getAddress(verifyingContract) !== CANONICAL.escrow) fail(`escrow verifyingContract ${verifyingContract}`);
  checks.escrowDomain = { name, version, chainId, verifyingContract };

  // The channel id three ways: on chain, locally (viem hashTypedData), and by the stock SDK.
  const cfg = {
    payer: "0x1111111111111111111111111111111111111111",
    payerAuthorizer: "0x2222222222222222222222222222222222222222",
    receiver: "0x3333333333333333333333333333333333333333",
    receiverAuthorizer: "0x4444444444444444444444444444444444444444",
    token: token ?? "0x5555555555555555555555555555555555555555",
    withdrawDelay: 900,
    salt: "0x00000000000000000000000000000000000000000000000000000000000000ab",
  };
  const onchain = await publicClient.readContract({ address: CANONICAL.escrow, abi: escrowReadAbi, functionName: "getChannelId", args: [cfg] });
  const local = localChannelId(cfg, chainId);
  const { computeChannelId } = await import("@x402/evm/batch-settlement/client");
  const sdk = computeChannelId(cfg, `eip155:${chainId}`);
  if (onchain !== local || onchain !== sdk) fail(`channelId on-chain ${onchain} local ${local} sdk ${sdk}`);
  checks.channelId = onchain;

  const collectorCode = await publicClient.getCode({ address: CANONICAL.collector });
  if (!collectorCode || collectorCode === "0x") fail("collector has no code");
  // Our collector exposes `escrow()`, x402's `x402BatchSettlement()`; read whichever the ABI has.
  const getter = (collectorAbi ?? []).find(
    x => x.type === "function" && x.inputs?.length === 0 && (x.name === "escrow" || x.name === "x402BatchSettlement"),
  );
  if (getter) {
    const bound = await publicClient.readContract({ address: CANONICAL.collector, abi: [getter], functionName: getter.name });
    if (getAddress(bound) !== CANONICAL.escrow) fail(`collector.${getter.name}() = ${bound}, not the canonical escrow`);
    checks.collectorEscrow = bound;
  }

  const mc = await publicClient.getCode({ address: CANONICAL.multicall3 });
  if (!mc || mc === "0x") fail("multicall3 has no code");
  checks.multicall3Block = (await publicClient.multicall({
    contracts: [{ address: CANONICAL.escrow, abi: escrowReadAbi, functionName: "eip712Domain" }],
    multicallAddress: CANONICAL.multicall3,
    allowFailure: false,
  })).length === 1;

  if (token) {
    const [, tName, tVersion] = await publicClient.readContract({ address: token, abi: erc20Abi, functionName: "eip712Domain" });
    const decimals = await publicClient.readContract({ address: token, abi: erc20Abi, functionName: "decimals" });
    if (tName !== TOKEN_DOMAIN.name || tVersion !== TOKEN_DOMAIN.version) fail(`token domain ${tName}/${tVersion}`);
    if (decimals !== 6) fail(`token decimals ${decimals}`);
    checks.token = { name: tName, version: tVersion, decimals };
  }
  return checks;
}

/** Mints `amount` tokens (atomic units) to each address with MockUSDC's public mint. */
export async function fund({ rpcUrl, deployerKey, token, to, amount = 1_000_000_000_000n }) {
  const ctx = await clients(rpcUrl, deployerKey);
  const out = [];
  for (const addr of to) {
    const hash = await ctx.wallet.writeContract({ address: token, abi: erc20Abi, functionName: "mint", args: [addr, BigInt(amount)] });
    const r = await ctx.publicClient.waitForTransactionReceipt({ hash, timeout: 30_000 });
    if (r.status !== "success") throw new Error(`mint to ${addr} reverted`);
    out.push({ address: getAddress(addr), balance: (await ctx.publicClient.readContract({ address: token, abi: erc20Abi, functionName: "balanceOf", args: [addr] })).toString() });
  }
  return out;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const cmd = args._[0];
  const rpcUrl = args.rpc ?? process.env.RPC_URL ?? "http://127.0.0.1:8545";
  const deployerKey = args.key ?? process.env.DEPLOYER_KEY;
  const json = toJson;
  if (cmd === "deploy") {
    if (!deployerKey) throw new Error("--key (or DEPLOYER_KEY) is required");
    const r = await deployCanonical({ rpcUrl, deployerKey, artifactsDir: args.artifacts, log: m => console.error(m) });
    if (args.verbose) console.error(json(r));
    console.log(json({ token: r.token, escrow: r.escrow, collector: r.collector, multicall3: r.multicall3, chainId: r.chainId }));
  } else if (cmd === "fund") {
    if (!deployerKey || !args.token || !args.to) throw new Error("fund needs --key, --token and --to a,b,…");
    const r = await fund({ rpcUrl, deployerKey, token: args.token, to: String(args.to).split(","), amount: BigInt(args.amount ?? "1000000000000") });
    console.log(json(r));
  } else if (cmd === "verify") {
    const art = loadArtifacts(args.artifacts);
    console.log(json(await verifyInstall({ rpcUrl, token: args.token, collectorAbi: art.collector.abi })));
  } else {
    console.error("usage: chain.mjs deploy|fund|verify --rpc URL [--key 0x…] [--token 0x…] [--to a,b] [--amount N] [--artifacts DIR]");
    process.exit(2);
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch(e => {
    console.error(e?.shortMessage ?? e?.message ?? e);
    process.exit(1);
  });
}
