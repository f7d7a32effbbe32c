// Small helpers shared by the interop scripts (no SDK logic here).
import { mnemonicToAccount, privateKeyToAccount } from "viem/accounts";

export const ANVIL_MNEMONIC = "test test test test test test test test test test test junk";

/** A key argument: `0x…` (32-byte hex) or `anvil:N` (anvil's default mnemonic, index N). */
export function accountFromKey(spec, opts) {
  const s = String(spec).trim();
  const m = /^anvil:(\d+)$/.exec(s);
  if (m) {
    const acct = mnemonicToAccount(ANVIL_MNEMONIC, { addressIndex: Number(m[1]) });
    const hdKey = acct.getHdKey().privateKey;
    const pk = `0x${Buffer.from(hdKey).toString("hex")}`;
    return privateKeyToAccount(pk, opts);
  }
  if (!/^0x[0-9a-fA-F]{64}$/.test(s)) throw new Error(`not a private key or anvil:N: ${s.slice(0, 10)}…`);
  return privateKeyToAccount(s, opts);
}

/** The hex private key for `0x…` or `anvil:N`. */
export function privateKeyOf(spec) {
  const s = String(spec).trim();
  const m = /^anvil:(\d+)$/.exec(s);
  if (!m) return s;
  const acct = mnemonicToAccount(ANVIL_MNEMONIC, { addressIndex: Number(m[1]) });
  return `0x${Buffer.from(acct.getHdKey().privateKey).toString("hex")}`;
}

export function parseArgs(argv) {
  const args = { _: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a.startsWith("--")) {
      const eq = a.indexOf("=");
      if (eq > 0) args[a.slice(2, eq)] = a.slice(eq + 1);
      else if (i + 1 < argv.length && !argv[i + 1].startsWith("--")) args[a.slice(2)] = argv[++i];
      else args[a.slice(2)] = true;
    } else args._.push(a);
  }
  return args;
}

/** JSON with bigints as decimal strings. */
export const toJson = (x, space) => JSON.stringify(x, (_, v) => (typeof v === "bigint" ? v.toString() : v), space);

export function b64json(header) {
  return JSON.parse(Buffer.from(header, "base64").toString("utf8"));
}

export const sleep = ms => new Promise(r => setTimeout(r, ms));

/** Rejects after `ms` with `label` unless `p` settles first. */
export function withTimeout(p, ms, label) {
  let t;
  return Promise.race([
    p.finally(() => clearTimeout(t)),
    new Promise((_, rej) => {
      t = setTimeout(() => rej(new Error(`timeout after ${ms} ms: ${label}`)), ms);
      t.unref?.();
    }),
  ]);
}
