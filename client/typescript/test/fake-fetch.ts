// Test driver (cmd/brokerd TestTypeScriptClient "fetched token expired on arrival"): a fake brokerd
// on a Unix socket answers FetchToken with a token that cannot serve (expired, without an expiry,
// expiring on arrival, empty), one per case; a client with no token searches once through it.
// Prints one JSON line per case: the error's code and message, and how many FetchToken and Search
// calls the fake saw (a Search means the client sent the token it should have refused).
// node fake-fetch.js SOCKET
import { Server, ServerCredentials, status, type ServerUnaryCall, type sendUnaryData } from "@grpc/grpc-js";
import { BrokerClient, BrokerError } from "../src/index.js";
import { SearchServiceService, type FetchTokenResponse, type SearchServiceServer } from "../src/gen/credbroker/v1/search.js";

const socket = process.argv[2];
const answer = (token: string, expiresAt: Date | undefined): FetchTokenResponse =>
  ({ token, id: "tid", expiresAt, workload: "fake", tools: ["web_search"] });
const cases: { name: string; answer: () => FetchTokenResponse }[] = [
  { name: "expired", answer: () => answer("cbt_expired", new Date(Date.now() - 1000)) },
  { name: "no expiry", answer: () => answer("cbt_noexpiry", undefined) },
  { name: "expires on arrival", answer: () => answer("cbt_1ms", new Date(Date.now() + 1)) },
  { name: "empty token", answer: () => answer("", new Date(Date.now() + 3600_000)) },
];
let current = cases[0];
let fetches = 0;
let searches = 0;
const refuse = (_call: ServerUnaryCall<unknown, unknown>, cb: sendUnaryData<never>) => {
  // What brokerd answers a token past its expiry; the client must not get this far.
  searches++;
  cb({ code: status.UNAUTHENTICATED, details: "token expired" });
};
const impl: SearchServiceServer = {
  fetchToken: (_call, cb) => {
    fetches++;
    cb(null, current.answer());
  },
  search: refuse,
  whoAmI: refuse,
};
const server = new Server();
server.addService(SearchServiceService, impl);
await new Promise<void>((resolve, reject) =>
  server.bindAsync("unix:" + socket, ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())));

for (const c of cases) {
  current = c;
  fetches = searches = 0;
  const client = new BrokerClient({ socket, timeoutMs: 10_000 });
  try {
    await client.search("q");
    console.log(JSON.stringify({ case: c.name, ok: true, fetches, searches }));
  } catch (e) {
    const err = e as BrokerError;
    console.log(JSON.stringify({ case: c.name, code: err.codeName, message: err.message, fetches, searches }));
  }
  client.close();
}
server.forceShutdown();
