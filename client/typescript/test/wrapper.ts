// Test driver (cmd/brokerd TestTypeScriptClient): calls the wrapper directly and prints one JSON
// line per search: the typed fields and raw object, or the error's code, reason and retry delay.
// node wrapper.js QUERY [QUERY...]   (socket and token from the environment)
import { BrokerClient, BrokerError } from "../src/index.js";

// TOKEN_FILE: the token comes from that file instead (BrokerClient's tokenFile option).
const c = new BrokerClient(process.env.TOKEN_FILE ? { tokenFile: process.env.TOKEN_FILE } : {});
for (const query of process.argv.slice(2)) {
  try {
    const r = await c.search(query, { numResults: 2 });
    console.log(JSON.stringify({ ok: true, titles: r.results.map((x) => x.title), rawIsPlain: r.results.every((x) => Object.getPrototypeOf(x.raw) === Object.prototype), raw: r.results[0]?.raw, metadata: r.metadata, credits: r.credits }));
  } catch (e) {
    if (!(e instanceof BrokerError)) throw e;
    console.log(JSON.stringify({ ok: false, code: e.codeName, reason: e.reason, retryDelayMs: e.retryDelayMs ?? null, metadata: e.metadata }));
  }
}
c.close();
