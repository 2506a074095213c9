// A thin client for brokerd's SearchService over its Unix socket. It follows the Go client
// (client/ in this repository): the same default socket, the same token sources in the same order,
// and errors that carry brokerd's machine-readable reason and retry delay. The generated code is
// in ./gen (scripts/gen.sh; do not edit).
//
// Unlike the Go and Python clients, it does not check which uid serves the socket: Node has no
// SO_PEERCRED and grpc-js no dialer hook. Keep the socket in a directory other users cannot write
// (brokerd's default /run/credbroker is), or use the Python or Go client where that matters.

import { stat, readFile } from "node:fs/promises";
import * as path from "node:path";
import { BinaryReader } from "@bufbuild/protobuf/wire";
import { credentials, Metadata, status as grpcStatus, type ServiceError } from "@grpc/grpc-js";
import {
  SearchServiceClient,
  type SearchRequest,
  type SearchResponse as SearchResponseMessage,
  type FetchTokenResponse,
  type GoogleSearchOptions,
  type WhoAmIResponse,
} from "./gen/credbroker/v1/search.js";
import type { Duration } from "./gen/google/protobuf/duration.js";

export type { WhoAmIResponse, GoogleSearchOptions };

export const TOKEN_ENV = "CREDBROKER_TOKEN";
export const SOCKET_ENV = "CREDBROKER_SOCKET";
export const ERROR_DOMAIN = "credbroker.dev";

/**
 * The socket brokerd listens on when nobody said otherwise (client.DefaultSocket in Go):
 * $CREDBROKER_SOCKET; $RUNTIME_DIRECTORY/broker.sock (its first entry); /run/credbroker/broker.sock
 * for root; $XDG_RUNTIME_DIR/credbroker/broker.sock; /run/user/UID/credbroker/broker.sock.
 */
export function defaultSocket(env: NodeJS.ProcessEnv = process.env, euid = process.geteuid?.() ?? -1,
  uid = process.getuid?.() ?? -1): string {
  if (env[SOCKET_ENV]) return env[SOCKET_ENV]!;
  const runtime = (env.RUNTIME_DIRECTORY ?? "").split(":")[0];
  if (runtime) return path.join(runtime, "broker.sock");
  if (euid === 0) return "/run/credbroker/broker.sock";
  if (env.XDG_RUNTIME_DIR) return path.join(env.XDG_RUNTIME_DIR, "credbroker", "broker.sock");
  return path.join("/run/user", String(uid), "credbroker", "broker.sock");
}

/** A failed call. Act on `reason` (README.md lists them with who must act), never on the message. */
export class BrokerError extends Error {
  /** The gRPC status code (grpc-js `status`). */
  readonly code: number;
  /** The code's name, e.g. "UNAUTHENTICATED". */
  readonly codeName: string;
  /** brokerd's stable name for the refusal (google.rpc.ErrorInfo, domain credbroker.dev); "" when
   * the error did not come from brokerd (a transport failure, an older brokerd). */
  readonly reason: string;
  /** What the call used: token_id, tool, credential (never a secret). */
  readonly metadata: Record<string, string>;
  /** Milliseconds brokerd says to wait before the same call can succeed (google.rpc.RetryInfo);
   * undefined when waiting is not known to help. */
  readonly retryDelayMs: number | undefined;

  constructor(code: number, message: string, reason = "", metadata: Record<string, string> = {},
    retryDelayMs?: number) {
    super(message || grpcStatus[code]);
    this.name = "BrokerError";
    this.code = code;
    this.codeName = grpcStatus[code] ?? String(code);
    this.reason = reason;
    this.metadata = metadata;
    this.retryDelayMs = retryDelayMs;
  }
}

export interface SearchResult {
  title: string;
  url: string;
  snippet: string;
  position: number;
  /** The result object exactly as the upstream sent it, as a plain object. */
  raw: Record<string, unknown>;
}

export interface SearchResponse {
  results: SearchResult[];
  tool: string;
  credential: string;
  credentialVersion: number;
  /** Every top-level field of the upstream answer other than "results", as a plain object. */
  metadata: Record<string, unknown>;
  cached: boolean;
  /** Milliseconds; undefined when not cached. */
  cacheAgeMs: number | undefined;
  credits: number;
  /** Milliseconds the call waited for the credential's rate limiter; undefined when it did not. */
  rateLimitWaitMs: number | undefined;
}

export interface SearchOptions {
  tool?: "web_search" | "google_search";
  numResults?: number;
  noCache?: boolean;
  google?: Partial<GoogleSearchOptions>;
  /** Call deadline in milliseconds (default: the client's timeoutMs). */
  timeoutMs?: number;
}

export interface ClientOptions {
  /** Default: defaultSocket(). */
  socket?: string;
  /** A broker token. Default: tokenFile, else $CREDBROKER_TOKEN, else attestation. */
  token?: string;
  /** A file holding the token, re-read whenever it changes. */
  tokenFile?: string;
  /** Per-call deadline in milliseconds (default 30 s). */
  timeoutMs?: number;
}

// grpc-js waited 12 s to reconnect after brokerd restarted with its defaults (1 s initial
// backoff growing to 120 s): a local socket is cheap to dial, so retry fast, as the Go client does.
const CHANNEL_OPTIONS = {
  "grpc.initial_reconnect_backoff_ms": 100,
  "grpc.max_reconnect_backoff_ms": 2000,
};

/**
 * A client for brokerd. Tokens: `token`, else `tokenFile` (re-read when it changes), else
 * $CREDBROKER_TOKEN, else tokens fetched by workload attestation (FetchToken: brokerd identifies
 * this process; an operator registered it with `brokerctl workload add`), renewed at about two
 * thirds of their lifetime. A call refused as UNAUTHENTICATED with a fetched token is retried once
 * with a fresh one.
 */
export class BrokerClient {
  readonly socket: string;
  private readonly stub: SearchServiceClient;
  private readonly tokens: TokenSource;
  private readonly timeoutMs: number;

  constructor(opts: ClientOptions = {}) {
    this.socket = path.resolve(opts.socket || defaultSocket());
    this.timeoutMs = opts.timeoutMs ?? 30_000;
    this.stub = new SearchServiceClient("unix:" + this.socket, credentials.createInsecure(), CHANNEL_OPTIONS);
    const envToken = (process.env[TOKEN_ENV] ?? "").trim();
    if (opts.token !== undefined) this.tokens = new StaticToken(checkedToken(opts.token, "token"));
    else if (opts.tokenFile !== undefined) this.tokens = new FileToken(opts.tokenFile);
    else if (envToken) this.tokens = new StaticToken(checkedToken(envToken, "$" + TOKEN_ENV));
    else this.tokens = new AttestedToken(() => this.fetchToken());
  }

  close(): void {
    this.stub.close();
  }

  /** Runs one search. `google` holds contract-B options for tool "google_search". */
  async search(query: string, opts: SearchOptions = {}): Promise<SearchResponse> {
    const req: SearchRequest = {
      tool: opts.tool ?? "web_search",
      query,
      numResults: opts.numResults ?? 0,
      noCache: opts.noCache ?? false,
      google: opts.google ? {
        searchType: "", countryCode: "", language: "", page: 0, device: "",
        nfpr: undefined, lightRequest: undefined, ...opts.google,
      } : undefined,
    };
    const resp = await this.call<SearchResponseMessage>((md, o, cb) => this.stub.search(req, md, o, cb), opts.timeoutMs);
    return {
      results: resp.results.map((r) => ({
        title: r.title, url: r.url, snippet: r.snippet, position: r.position, raw: r.raw ?? {},
      })),
      tool: resp.tool,
      credential: resp.credential,
      credentialVersion: resp.credentialVersion,
      metadata: resp.metadata ?? {},
      cached: resp.cached,
      cacheAgeMs: millis(resp.cacheAge),
      credits: resp.credits,
      rateLimitWaitMs: millis(resp.rateLimitWait),
    };
  }

  /** Describes the token calls are made with (never its secret). */
  whoAmI(timeoutMs?: number): Promise<WhoAmIResponse> {
    return this.call<WhoAmIResponse>((md, o, cb) => this.stub.whoAmI({}, md, o, cb), timeoutMs);
  }

  private async call<T>(
    invoke: (md: Metadata, o: { deadline: Date }, cb: (err: ServiceError | null, resp: T) => void) => void,
    timeoutMs?: number,
  ): Promise<T> {
    const tok = await this.tokens.token();
    try {
      return await this.invoke(invoke, tok, timeoutMs);
    } catch (e) {
      if (!(e instanceof BrokerError) || e.code !== grpcStatus.UNAUTHENTICATED || !this.tokens.invalidate(tok)) {
        throw e;
      }
    }
    // A fetched token brokerd no longer knows (it restarted): once more with a fresh one.
    return this.invoke(invoke, await this.tokens.token(), timeoutMs);
  }

  private invoke<T>(
    invoke: (md: Metadata, o: { deadline: Date }, cb: (err: ServiceError | null, resp: T) => void) => void,
    tok: string | undefined,
    timeoutMs?: number,
  ): Promise<T> {
    const md = new Metadata();
    if (tok) md.set("authorization", "Bearer " + tok);
    const deadline = new Date(Date.now() + (timeoutMs ?? this.timeoutMs));
    return new Promise<T>((resolve, reject) => {
      invoke(md, { deadline }, (err, resp) => (err ? reject(errorFromGrpc(err, this.socket)) : resolve(resp)));
    });
  }

  private async fetchToken(): Promise<[string, number]> {
    const resp = await this.invoke<FetchTokenResponse>(
      (md, o, cb) => this.stub.fetchToken({ tools: [] }, md, o, cb), undefined);
    return [resp.token, resp.expiresAt?.getTime() ?? 0];
  }
}

function millis(d: Duration | undefined): number | undefined {
  return d === undefined ? undefined : d.seconds * 1000 + d.nanos / 1e6;
}

function checkedToken(tok: string, what: string): string {
  tok = tok.trim();
  // Never echo the token: it is a secret, and this may end up in a log.
  if (!tok || !/^[\x20-\x7e]+$/.test(tok)) {
    throw new Error(`${what} is empty or holds characters that cannot be sent in a gRPC header; is it a credbroker token?`);
  }
  return tok;
}

/** Converts a grpc-js error into a BrokerError with the reason and retry delay brokerd sent in
 * grpc-status-details-bin (a google.rpc.Status holding ErrorInfo and RetryInfo). */
export function errorFromGrpc(err: ServiceError, socket = ""): BrokerError {
  let reason = "";
  let metadata: Record<string, string> = {};
  let retry: number | undefined;
  for (const v of err.metadata?.get("grpc-status-details-bin") ?? []) {
    if (typeof v !== "string") [reason, metadata, retry] = statusDetails(v);
  }
  let message = err.details ?? err.message;
  if (err.code === grpcStatus.UNAVAILABLE && !reason && socket) {
    message = `cannot reach brokerd at ${socket}: is it running? (${message})`;
  }
  return new BrokerError(err.code, message, reason, metadata, retry);
}

// google.rpc.Status is decoded from its wire format with @bufbuild/protobuf's reader (the runtime
// the generated code uses) rather than generated google/rpc types: only the fields read below
// matter, and every other field is skipped.
const ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo";
const RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo";

function fields(buf: Uint8Array, each: (num: number, r: BinaryReader, wire: number) => void): void {
  const r = new BinaryReader(buf);
  while (r.pos < r.len) {
    const [num, wire] = r.tag();
    const before = r.pos;
    each(num, r, wire);
    if (r.pos === before) r.skip(wire);
  }
}

function statusDetails(raw: Uint8Array): [string, Record<string, string>, number | undefined] {
  let reason = "";
  let metadata: Record<string, string> = {};
  let retry: number | undefined;
  try {
    fields(raw, (num, r, wire) => {
      if (num !== 3 || wire !== 2) return; // Status.details: repeated google.protobuf.Any
      let typeUrl = "";
      let body: Uint8Array = new Uint8Array();
      fields(r.bytes(), (n, a, w) => {
        if (n === 1 && w === 2) typeUrl = a.string();
        else if (n === 2 && w === 2) body = a.bytes();
      });
      if (typeUrl === ERROR_INFO) {
        let r2 = "", domain = "";
        const md: Record<string, string> = {};
        fields(body, (n, e, w) => {
          if (w !== 2) return;
          if (n === 1) r2 = e.string();
          else if (n === 2) domain = e.string();
          else if (n === 3) { // map<string,string> entry
            let k = "", v = "";
            fields(e.bytes(), (m, x, mw) => {
              if (mw !== 2) return;
              if (m === 1) k = x.string();
              else if (m === 2) v = x.string();
            });
            md[k] = v;
          }
        });
        if (domain === ERROR_DOMAIN && !reason) [reason, metadata] = [r2, md];
      } else if (typeUrl === RETRY_INFO) {
        fields(body, (n, d, w) => {
          if (n !== 1 || w !== 2) return; // retry_delay: google.protobuf.Duration
          let secs = 0, nanos = 0;
          fields(d.bytes(), (m, x, mw) => {
            if (mw !== 0) return;
            if (m === 1) secs = Number(x.int64());
            else if (m === 2) nanos = x.int32();
          });
          const ms = secs * 1000 + nanos / 1e6;
          if (ms > 0) retry = ms;
        });
      }
    });
  } catch {
    return ["", {}, undefined]; // not a google.rpc.Status: no details rather than a crash
  }
  return [reason, metadata, retry];
}

// --- token sources ---

interface TokenSource {
  token(): Promise<string | undefined>;
  /** Drops tok if this source can get another; reports whether a retry may help. */
  invalidate(tok: string | undefined): boolean;
}

class StaticToken implements TokenSource {
  readonly #tok: string; // an ES private field: util.inspect/console.log never show the token
  constructor(tok: string) { this.#tok = tok; }
  async token() { return this.#tok; }
  invalidate() { return false; }
}

/** Re-reads the file when its size, modification time or inode changes, so a token rotated into
 * it by another process is used by the next call. */
class FileToken implements TokenSource {
  private stamp = "";
  #tok = ""; // an ES private field: util.inspect/console.log never show the token
  constructor(private readonly file: string) {}
  async token() {
    const st = await stat(this.file, { bigint: true });
    const stamp = `${st.size}:${st.mtimeNs}:${st.ino}`;
    if (stamp !== this.stamp || !this.#tok) {
      this.#tok = checkedToken(await readFile(this.file, "utf8"), `token file ${this.file}`);
      this.stamp = stamp;
    }
    return this.#tok;
  }
  invalidate() { return false; }
}

/** Tokens fetched by attestation, renewed on the first call after two thirds of their lifetime;
 * a token within 2 s (or a sixth of its lifetime) of expiry is never used. Concurrent calls share
 * one fetch. */
class AttestedToken implements TokenSource {
  #tok = ""; // an ES private field: util.inspect/console.log never show the token
  private issued = 0;
  private expires = 0;
  private inflight: Promise<string> | undefined;
  constructor(private readonly fetch: () => Promise<[string, number]>) {}

  token(): Promise<string> {
    const now = Date.now();
    const life = this.expires - this.issued;
    if (this.#tok && now < this.issued + (life * 2) / 3) return Promise.resolve(this.#tok);
    this.inflight ??= this.fetch().then(
      ([tok, expires]) => {
        this.#tok = tok;
        this.issued = Date.now();
        this.expires = expires;
        return tok;
      },
      (err) => {
        // Renewal failed: the current token may still serve until it nears its expiry.
        if (this.#tok && Date.now() + Math.min(2000, life / 6) < this.expires) return this.#tok;
        throw err;
      },
    ).finally(() => { this.inflight = undefined; });
    return this.inflight;
  }

  invalidate(tok: string | undefined): boolean {
    if (tok && tok === this.#tok) {
      this.#tok = "";
      return true;
    }
    return false;
  }
}
