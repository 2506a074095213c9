// Test driver (cmd/brokerd TestTypeScriptClient "attested renewal backs off"): BrokerClient's
// attestation token source with a fake clock and a fake FetchToken. Prints one line per step: the
// token the step got (or the error's code) and how many fetches were made so far.
// node attested.js
import { AttestedToken, BrokerError } from "../src/index.js";

const hour = 3600_000;
let now = Date.UTC(2026, 0, 1); // the fake clock, in ms
let fetches = 0;
let answer: () => [string, number] = () => ["tok-1", now + hour];
const src = new AttestedToken(async () => {
  fetches++;
  return answer();
}, () => now);
const step = async (what: string) => {
  let got: string;
  try {
    got = await src.token();
  } catch (e) {
    got = e instanceof BrokerError ? e.codeName : String(e);
  }
  console.log(`${what}: ${got} after ${fetches} fetches`);
};

await step("first");
// Renewal is due at two thirds of the hour; brokerd answers it with tokens expired on arrival.
now += (hour * 2) / 3 + 1000;
answer = () => ["tok-late", now - 1000];
await step("renewal refused");
await step("backing off");
now += 200;
await step("after 200ms");
now += 200;
await step("backing off 400ms");
now += 200;
await step("after 400ms");
answer = () => ["tok-2", now + hour];
now += 800;
await step("renewed");
// tok-2 has expired: with no token that may serve, every call fetches once and fails.
now += hour;
answer = () => ["tok-late", now - 1000];
await step("no usable token");
await step("again");
