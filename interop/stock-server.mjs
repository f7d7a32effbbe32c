#!/usr/bin/env node
// The stock x402 batch-settlement resource server: @x402/express paymentMiddleware
// + the @x402/evm batch-settlement server scheme, with an in-process facilitator
// (@x402/core x402Facilitator + the @x402/evm batch-settlement facilitator
// scheme) that sends its transactions to a local anvil. No project code runs in
// the payment path; this is the reference peer our Rust client must pay.
//
//   node interop/stock-server.mjs --rpc http://127.0.0.1:8545 --token 0x… \
//     [--port 0] [--price 1000] [--facilitator-key anvil:1] \
//     [--authorizer-key anvil:2] [--pay-to 0x…|anvil:7] [--withdraw-delay 900] \
//     [--storage memory|file] [--storage-dir DIR] [--token-name USDC] [--token-version 2]
//
// Every option can also come from the environment: RPC_URL, PORT, TOKEN, PRICE,
// FACILITATOR_KEY, AUTHORIZER_KEY, PAY_TO, WITHDRAW_DELAY, STORAGE, STORAGE_DIR.
// Keys are `0x…` or `anvil:N` (anvil's default mnemonic).
//
// Routes (all on 127.0.0.1):
//   GET  /health                  free
//   GET  /paid[?charge=N|N%]      max price `price` atomic units; the handler charges
//                                 `charge` (default: uniform random in [1, price])
//                                 through setSettlementOverrides(res, {amount})
//   GET  /admin/stats             what this server charged, per channel, from its own
//                                 PAYMENT-RESPONSE headers (survives SDK storage deletes)
//   GET  /admin/channels          the SDK channel storage (ChannelStorage.list())
//   POST /admin/claim-and-settle  channelManager.claimAndSettle()  (also: kill -USR2)
//   POST /admin/claim | /admin/settle | /admin/refund[?channel=0x…]
//
// Prints exactly one line `READY {json}` on stdout when listening. SIGTERM/SIGINT
// close the listener and exit 0 (forced after 5 s).

import express from "express";
import { paymentMiddleware, setSettlementOverrides, x402ResourceServer } from "@x402/express";
import { x402Facilitator } from "@x402/core/facilitator";
import { toFacilitatorEvmSigner } from "@x402/evm";
import { BatchSettlementEvmScheme as BatchServerScheme, InMemoryChannelStorage } from "@x402/evm/batch-settlement/server";
import { BatchSettlementEvmScheme as BatchFacilitatorScheme } from "@x402/evm/batch-settlement/facilitator";
import { createPublicClient, createWalletClient, defineChain, getAddress, http, nonceManager, publicActions } from "viem";
import { accountFromKey, b64json, parseArgs, toJson } from "./common.mjs";

const args = parseArgs(process.argv.slice(2));
const opt = (name, env, dflt) => args[name] ?? process.env[env] ?? dflt;

const rpcUrl = opt("rpc", "RPC_URL", "http://127.0.0.1:8545");
const port = Number(opt("port", "PORT", "0"));
const host = "127.0.0.1";
const tokenArg = opt("token", "TOKEN");
const price = String(opt("price", "PRICE", "1000"));
const withdrawDelay = Number(opt("withdraw-delay", "WITHDRAW_DELAY", "900"));
const storageKind = opt("storage", "STORAGE", "memory");
const storageDir = opt("storage-dir", "STORAGE_DIR");
const tokenName = opt("token-name", "TOKEN_NAME", "USDC");
const tokenVersion = opt("token-version", "TOKEN_VERSION", "2");
const quiet = Boolean(args.quiet);

if (!tokenArg) {
  console.error("stock-server: --token (or TOKEN) is required");
  process.exit(2);
}
if (!/^\d+$/.test(price) || BigInt(price) <= 0n) {
  console.error("stock-server: --price must be a positive integer (atomic units)");
  process.exit(2);
}
const token = getAddress(tokenArg);
const log = (...m) => {
  if (!quiet) console.error("[stock-server]", ...m);
};

const facilitatorAccount = accountFromKey(opt("facilitator-key", "FACILITATOR_KEY", "anvil:1"), { nonceManager });
const authorizerAccount = accountFromKey(opt("authorizer-key", "AUTHORIZER_KEY", "anvil:2"));
const payToArg = opt("pay-to", "PAY_TO", "anvil:7");
const payTo = /^anvil:\d+$/.test(payToArg) ? accountFromKey(payToArg).address : getAddress(payToArg);

// ---- chain + in-process facilitator ----------------------------------------
const chainId = await createPublicClient({ transport: http(rpcUrl) }).getChainId();
const network = `eip155:${chainId}`;
const chain = defineChain({
  id: chainId,
  name: `local-${chainId}`,
  nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
  rpcUrls: { default: { http: [rpcUrl] } },
});
// pollingInterval: viem's default for a chain without blockTime is 4 s; anvil automines.
const wallet = createWalletClient({ account: facilitatorAccount, chain, transport: http(rpcUrl), pollingInterval: 50 }).extend(publicActions);
const facilitatorSigner = toFacilitatorEvmSigner({
  address: facilitatorAccount.address,
  getCode: a => wallet.getCode(a),
  readContract: a => wallet.readContract(a),
  verifyTypedData: a => wallet.verifyTypedData(a),
  writeContract: a => wallet.writeContract(a),
  sendTransaction: a => wallet.sendTransaction(a),
  waitForTransactionReceipt: a => wallet.waitForTransactionReceipt(a),
});
// The receiver authorizer stays with the resource server, so the facilitator gets none.
const facilitator = new x402Facilitator().register(network, new BatchFacilitatorScheme(facilitatorSigner));

// ---- resource server --------------------------------------------------------
let storage;
if (storageKind === "file") {
  const { FileChannelStorage } = await import("@x402/evm/batch-settlement/server/file-storage");
  if (!storageDir) {
    console.error("stock-server: --storage file needs --storage-dir");
    process.exit(2);
  }
  storage = new FileChannelStorage({ directory: storageDir });
} else if (storageKind === "memory") {
  storage = new InMemoryChannelStorage();
} else {
  console.error(`stock-server: unknown --storage ${storageKind}`);
  process.exit(2);
}

const scheme = new BatchServerScheme(payTo, {
  receiverAuthorizerSigner: authorizerAccount,
  withdrawDelay,
  storage,
});
// Route prices given in "$" resolve onto the local token (6 decimals) with its
// EIP-712 domain in `extra`; without name/version the facilitator rejects deposits.
scheme.registerMoneyParser(async (amount, net) =>
  net === network
    ? { amount: BigInt(Math.round(Number(amount) * 1e6)).toString(), asset: token, extra: { name: tokenName, version: tokenVersion } }
    : null,
);
const resourceServer = new x402ResourceServer(facilitator).register(network, scheme);
const manager = scheme.createChannelManager(facilitator, network, token);

// Per-channel accounting taken from the PAYMENT-RESPONSE headers this server sent.
const stats = { paidResponses: 0, refundResponses: 0, responses402: 0, channels: {} };
const chan = id => (stats.channels[id] ??= { charged: 0n, requests: 0, deposits: 0, deposited: 0n, refunds: 0, refunded: 0n, lastCumulative: "0" });
function record(res) {
  const h = res.getHeader("PAYMENT-RESPONSE") ?? res.getHeader("payment-response");
  if (!h) {
    if (res.statusCode === 402) stats.responses402++;
    return;
  }
  try {
    const r = b64json(String(h));
    const cs = r.extra?.channelState;
    if (!r.success || !cs?.channelId) return;
    const c = chan(cs.channelId.toLowerCase());
    if (r.extra.chargedAmount !== undefined) {
      stats.paidResponses++;
      c.requests++;
      c.charged += BigInt(r.extra.chargedAmount);
      c.lastCumulative = cs.chargedCumulativeAmount;
      if (r.transaction) {
        c.deposits++;
        c.deposited += BigInt(r.amount || "0");
      }
    } else if (r.transaction) {
      stats.refundResponses++;
      c.refunds++;
      c.refunded += BigInt(r.amount || "0");
    }
  } catch (e) {
    log("cannot decode PAYMENT-RESPONSE:", e.message);
  }
}

const app = express();
app.disable("x-powered-by");
app.use((req, res, next) => {
  res.on("finish", () => record(res));
  next();
});

app.get("/health", (_req, res) => res.json({ ok: true }));

app.use(
  paymentMiddleware(
    {
      "GET /paid": {
        accepts: {
          scheme: "batch-settlement",
          price: { amount: price, asset: token, extra: { name: tokenName, version: tokenVersion } },
          network,
          payTo,
        },
        description: "x402-upto interop: metered resource",
        mimeType: "application/json",
      },
    },
    resourceServer,
  ),
);

app.get("/paid", (req, res) => {
  const q = req.query.charge;
  let charge;
  if (q === undefined) {
    charge = (1n + BigInt(Math.floor(Math.random() * Number(price)))).toString();
  } else if (/^\d+$/.test(String(q))) {
    charge = String(q);
    if (BigInt(charge) > BigInt(price)) {
      // A 4xx from the handler means no settlement: the voucher is not consumed.
      return res.status(400).json({ error: `charge ${charge} exceeds max ${price}` });
    }
  } else if (/^\d+(\.\d{1,2})?%$/.test(String(q))) {
    charge = String(q);
  } else {
    return res.status(400).json({ error: "charge must be an integer or N%" });
  }
  setSettlementOverrides(res, { amount: charge });
  res.json({ ok: true, requestedCharge: charge, max: price });
});

const admin = (fn, name) => async (req, res) => {
  try {
    const out = await fn(req);
    log(name, toJson(out));
    res.type("application/json").send(toJson({ ok: true, result: out }));
  } catch (e) {
    log(name, "failed:", e?.stack ?? e);
    res.status(500).type("application/json").send(toJson({ ok: false, error: String(e?.message ?? e) }));
  }
};
app.get("/admin/stats", (_req, res) =>
  res.type("application/json").send(toJson({ network, token, payTo, receiverAuthorizer: authorizerAccount.address, facilitator: facilitatorAccount.address, price, ...stats })),
);
app.get("/admin/channels", admin(() => storage.list(), "channels"));
const maxClaimsPerBatch = Number(opt("max-claims-per-batch", "MAX_CLAIMS_PER_BATCH", "100"));
app.post("/admin/claim-and-settle", admin(() => manager.claimAndSettle({ maxClaimsPerBatch }), "claimAndSettle"));
app.post("/admin/claim", admin(() => manager.claim({ maxClaimsPerBatch }), "claim"));
app.post("/admin/settle", admin(() => manager.settle(), "settle"));
app.post("/admin/refund", admin(req => manager.refund(req.query.channel ? [String(req.query.channel)] : undefined), "refund"));

process.on("SIGUSR2", () => {
  manager.claimAndSettle({ maxClaimsPerBatch }).then(
    r => log("claimAndSettle (SIGUSR2)", toJson(r)),
    e => log("claimAndSettle (SIGUSR2) failed:", e?.message ?? e),
  );
});

const server = app.listen(port, host, () => {
  const addr = server.address();
  const url = `http://${host}:${addr.port}`;
  console.log(
    `READY ${toJson({ url, paid: `${url}/paid`, network, token, payTo, receiverAuthorizer: authorizerAccount.address, facilitator: facilitatorAccount.address, price, withdrawDelay, storage: storageKind })}`,
  );
});
server.on("error", e => {
  console.error("stock-server: listen failed:", e.message);
  process.exit(1);
});

let stopping = false;
function shutdown(sig) {
  if (stopping) return;
  stopping = true;
  log(`${sig}: shutting down`);
  setTimeout(() => process.exit(0), 5000).unref();
  server.close(() => process.exit(0));
  server.closeAllConnections?.();
}
process.on("SIGTERM", () => shutdown("SIGTERM"));
process.on("SIGINT", () => shutdown("SIGINT"));
