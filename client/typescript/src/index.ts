// A thin client for brokerd's SearchService over its Unix socket. It follows the Go client
// (client/ in this repository): the same default socket, the same token sources in the same order,
// and errors that carry brokerd's machine-readable reason and retry delay. The generated code is
// in ./gen (scripts/gen.sh; do not edit).
//
// Like the Go and Python clients, it refuses a socket another user may be serving before it sends
// anything (checkServer), with the same trusted uids (root, its own, $CREDBROKER_SERVER_UID,
// serverUids). Node cannot read SO_PEERCRED, so it checks the owners of the socket file and of the
// directories above it instead of the uid that called listen(2): see checkServer.

import { constants as fsConstants, close as closeFd, fstat as fstatFd, open as openFd, read as readFd } from "node:fs";
import { lstat, realpath, stat } from "node:fs/promises";
import { Socket } from "node:net";
import * as path from "node:path";
import { promisify } from "node:util";
import { BinaryReader } from "@bufbuild/protobuf/wire";
import { CallCredentials, ChannelCredentials, connectivityState, Metadata, status as grpcStatus, type ServiceError } from "@grpc/grpc-js";
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
/** Lists, comma-separated, the uids besides root and the client's own that may serve the socket
 * (client.ServerUIDEnv in Go). */
export const SERVER_UID_ENV = "CREDBROKER_SERVER_UID";
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

/** The socket may be served by a uid the client does not trust (not root, not its own, not in
 * $CREDBROKER_SERVER_UID or serverUids): nothing (no token, no request) was sent to it. Its code
 * is PERMISSION_DENIED. */
export class UntrustedServerError extends BrokerError {
  constructor(message: string) {
    super(grpcStatus.PERMISSION_DENIED, message);
    this.name = "UntrustedServerError";
  }
}

/** The uids that may serve the socket: root, the effective uid, then those in envValue
 * ($CREDBROKER_SERVER_UID) and extra. A malformed value throws rather than being ignored: ignoring
 * it would refuse the server the operator meant to allow, with a message that hides why. */
export function trustedUids(envValue = process.env[SERVER_UID_ENV] ?? "", extra: readonly number[] = [],
  euid = process.geteuid?.() ?? -1): number[] {
  const uids = [0, euid];
  for (const f of envValue.split(",").map((x) => x.trim()).filter((x) => x)) {
    if (!/^[0-9]+$/.test(f) || Number(f) > 0xffffffff) {
      throw new Error(`$${SERVER_UID_ENV}=${JSON.stringify(envValue)}: ${JSON.stringify(f)} is not a numeric uid ` +
        `(want e.g. ${SERVER_UID_ENV}=$(id -u credbroker))`);
    }
    uids.push(Number(f));
  }
  for (const u of extra) {
    if (!Number.isInteger(u) || u < 0 || u > 0xffffffff) throw new Error(`serverUids: ${u} is not a uid`);
    uids.push(u);
  }
  return uids;
}

/** Which file a path named when it was checked: a socket brokerd re-creates is another file. */
export interface SocketFile {
  dev: bigint;
  ino: bigint;
}

/**
 * Refuses a socket that a uid not in `trusted` serves or could swap in, before anything is sent
 * to it, and returns the file it checked.
 *
 * The Go and Python clients ask the kernel who called listen(2) on the socket (SO_PEERCRED). Node
 * cannot, so this checks what decides who can be listening at the path instead, as brokerd
 * checks its own socket directory: the socket file is owned by a trusted uid (bind(2) made it
 * as whoever listens on it, or systemd did, owned as its SocketUser=); every directory above it is
 * owned by a trusted uid and not writable by group or others without the sticky bit, so no one
 * else can rename another socket into the path; and a symbolic link on the way is a trusted uid's.
 * Anything else throws UntrustedServerError; a path that cannot be read throws its Node error.
 *
 * Differences from SO_PEERCRED: under the shipped credbroker.socket the file is owned by
 * `credbroker` (SocketUser=) while root listens, so this client needs
 * CREDBROKER_SERVER_UID=$(id -u credbroker) where the Go and Python clients need nothing; and it
 * trusts whoever a trusted uid let listen there (brokerd does not hand its socket on).
 */
export async function checkServer(socketPath: string, trusted: readonly number[]): Promise<SocketFile> {
  const abs = path.resolve(socketPath);
  const euid = process.geteuid?.() ?? -1;
  const refuse = (what: string, uid: number | bigint) => new UntrustedServerError(
    `the socket ${abs} ${what}, not root, your uid ${euid} or $${SERVER_UID_ENV}; refusing to send a token or request ` +
    `(if that uid is brokerd's, set ${SERVER_UID_ENV}=${uid})`);
  const isTrusted = (uid: bigint) => trusted.some((u) => BigInt(u) === uid);
  for (const p of [...ancestors(path.dirname(abs)), abs]) {
    const st = await lstat(p, { bigint: true });
    if (st.isSymbolicLink() && !isTrusted(st.uid)) {
      throw refuse(`goes through ${p}, a symbolic link owned by uid ${st.uid}, who could point it at a socket of their own`, st.uid);
    }
  }
  const real = await realpath(abs);
  for (const d of ancestors(path.dirname(real))) {
    const st = await stat(d, { bigint: true });
    if (!isTrusted(st.uid)) {
      throw refuse(`is inside ${d} (owner uid ${st.uid}), whose owner could replace it with a socket of their own`, st.uid);
    }
    const mode = Number(st.mode & 0o7777n);
    if ((mode & 0o022) !== 0 && (mode & 0o1000) === 0) {
      throw new UntrustedServerError(`the socket ${abs} is inside ${d} (mode ${mode.toString(8).padStart(4, "0")}), which group or ` +
        `others may write without the sticky bit, so they could replace it with a socket of their own; refusing to send ` +
        `a token or request (chmod go-w ${d}, or use another socket)`);
    }
  }
  const st = await stat(real, { bigint: true });
  if (!st.isSocket()) throw new Error(`${abs} is not a socket; is brokerd's socket elsewhere (${SOCKET_ENV})?`);
  if (!isTrusted(st.uid)) throw refuse(`is owned by uid ${st.uid}`, st.uid);
  return { dev: st.dev, ino: st.ino };
}

/** dir and every directory above it, root first. */
function ancestors(dir: string): string[] {
  const out = [dir];
  for (let d = dir; path.dirname(d) !== d; d = path.dirname(d)) out.unshift(path.dirname(d));
  return out;
}

/**
 * Insecure channel credentials (the socket is local; brokerd identifies callers by SO_PEERCRED)
 * whose connector runs checkServer for every connection grpc-js makes: once before it connects,
 * and once connected, before the HTTP/2 preface or any call is written, that the path still names
 * the file checked. grpc-js has no dialer hook; its connector is the last step before the socket
 * carries anything.
 */
class CheckedCredentials extends ChannelCredentials {
  constructor(private readonly check: () => Promise<SocketFile>) {
    super();
  }

  _isSecure(): boolean {
    return false;
  }

  _equals(other: ChannelCredentials): boolean {
    return other === this;
  }

  _createSecureConnector(...[, , callCredentials]: Parameters<ChannelCredentials["_createSecureConnector"]>):
    ReturnType<ChannelCredentials["_createSecureConnector"]> {
    const creds = callCredentials ?? CallCredentials.createEmpty();
    let before: Promise<SocketFile> | undefined;
    return {
      // grpc-js waits for this before each connection it makes.
      waitForReady: async () => {
        before = this.check();
        await before;
      },
      connect: async (socket) => {
        const want = await (before ?? this.check());
        before = undefined;
        const now = await this.check();
        if (now.dev !== want.dev || now.ino !== want.ino) {
          // brokerd restarted in between, or someone swapped the socket: try again.
          throw new Error("the socket was replaced while connecting to it");
        }
        return { socket, secure: false };
      },
      getCallCredentials: () => creds,
      destroy: () => {},
    };
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
  /** A file holding the token, re-read whenever it changes. Over 4 KiB it is refused, not read;
   * a FIFO nobody writes to reads as empty at once (is refused), a pipe with a writer is read. */
  tokenFile?: string;
  /** Per-call deadline in milliseconds (default 30 s). */
  timeoutMs?: number;
  /** Uids that may serve the socket besides root, the effective uid and $CREDBROKER_SERVER_UID
   * (WithServerUID in Go, server_uids in Python). */
  serverUids?: number[];
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
 * with a fresh one. A fetched token that arrives with less than 100 ms left (a registration's
 * --ttl too short) or without an expiry fails the call with FAILED_PRECONDITION, an empty one with
 * INTERNAL; a failed renewal keeps a still-valid token serving and is retried with backoff.
 *
 * Every connection first checks who may be serving the socket (checkServer): root, the effective
 * uid, a uid in $CREDBROKER_SERVER_UID or in `serverUids`. Anything else fails the call with
 * UntrustedServerError (PERMISSION_DENIED) before a byte (token or request) is written.
 */
export class BrokerClient {
  readonly socket: string;
  private readonly stub: SearchServiceClient;
  private readonly tokens: TokenSource;
  private readonly timeoutMs: number;
  /** Why the last connection was refused, if it was an untrusted server; calls that fail for want
   * of a connection report it (grpc-js only says UNAVAILABLE). */
  private untrusted: UntrustedServerError | undefined;
  /** checkServer on this client's socket, remembering an untrusted server in `untrusted`. */
  private readonly check: () => Promise<SocketFile>;

  constructor(opts: ClientOptions = {}) {
    this.socket = path.resolve(opts.socket || defaultSocket());
    this.timeoutMs = opts.timeoutMs ?? 30_000;
    const trusted = trustedUids(process.env[SERVER_UID_ENV] ?? "", opts.serverUids ?? []);
    const check = this.check = async () => {
      try {
        const file = await checkServer(this.socket, trusted);
        this.untrusted = undefined;
        return file;
      } catch (e) {
        this.untrusted = e instanceof UntrustedServerError ? e : undefined;
        throw e;
      }
    };
    this.stub = new SearchServiceClient("unix:" + this.socket, new CheckedCredentials(check), CHANNEL_OPTIONS);
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
    const deadline = new Date(Date.now() + (timeoutMs ?? this.timeoutMs));
    return this.waitTurn(deadline.getTime()).then((waitForReady) => new Promise<T>((resolve, reject) => {
      const md = new Metadata({ waitForReady });
      if (tok) md.set("authorization", "Bearer " + tok);
      invoke(md, { deadline }, (err, resp) => {
        if (!err) resolve(resp);
        else if (err.code === grpcStatus.UNAVAILABLE && this.untrusted) reject(this.untrusted);
        else reject(errorFromGrpc(err, this.socket));
      });
    }));
  }

  /**
   * Before a call on a channel that is not connected: waits while brokerd's accept queue is full
   * (a connect to it fails at once with EAGAIN, and grpc-js then fails the call), until deadline
   * (ms). Resolves whether the call should wait for the channel (waitForReady) rather than fail
   * at its first failed connect: it should once a connect got through, so a grpc-js connect that
   * finds the queue full again is retried, until the deadline. A server that is untrusted or not
   * there fails the call at once, as before.
   */
  private async waitTurn(deadline: number): Promise<boolean> {
    if (this.stub.getChannel().getConnectivityState(false) === connectivityState.READY) return false;
    try {
      await this.check();
    } catch (e) {
      if (e instanceof UntrustedServerError) throw e;
      return false; // not there: grpc-js's own connect says so
    }
    for (let wait = BUSY_RETRY_MIN_MS; ; wait = Math.min(2 * wait, BUSY_RETRY_MAX_MS)) {
      const code = await connectOnce(this.socket);
      if (code !== "EAGAIN") return code === undefined;
      // brokerd's accept queue is full: it is alive, and busy, or another local user is
      // connecting in a loop to keep it full, which needs no token. A connect to a Unix socket
      // then fails at once, where TCP's would wait its turn: wait it here, until the deadline,
      // or one such user would keep every client (an admin's too) out.
      testHooks.onBusy?.();
      const pause = wait / 2 + Math.random() * wait;
      if (Date.now() + pause >= deadline) {
        throw new BrokerError(grpcStatus.UNAVAILABLE, `brokerd at ${this.socket} is running, but its queue of new ` +
          "connections stayed full until the deadline (brokerd overloaded, or a local user connecting in a loop); " +
          "retry, or ask the operator to check brokerd");
      }
      await new Promise((resolve) => setTimeout(resolve, pause));
    }
  }

  private async fetchToken(): Promise<[string, number]> {
    const resp = await this.invoke<FetchTokenResponse>(
      (md, o, cb) => this.stub.fetchToken({ tools: [] }, md, o, cb), undefined);
    // No expiry at all (an older or broken brokerd) reads as expired long ago: checkFetched
    // refuses it rather than handing out a token of unknown life.
    return [resp.token, resp.expiresAt?.getTime() ?? 0];
  }
}

/** A connect that finds brokerd's accept queue full (EAGAIN) is tried again after a pause growing
 * from BUSY_RETRY_MIN_MS to BUSY_RETRY_MAX_MS (jittered), until the call's deadline (busyRetryMin and
 * busyRetryMax in the Go client). */
const BUSY_RETRY_MIN_MS = 1;
const BUSY_RETRY_MAX_MS = 50;

/** For cmd/brokerd's tests, not part of the client's API: onBusy is called each time a connect
 * found brokerd's accept queue full. */
export const testHooks: { onBusy?: () => void } = {};

/** Connects to socketPath and closes the connection at once; resolves undefined if it connected,
 * else the error's code (EAGAIN: the accept queue is full). */
function connectOnce(socketPath: string): Promise<string | undefined> {
  return new Promise((resolve) => {
    const s = new Socket();
    s.once("connect", () => {
      s.destroy();
      resolve(undefined);
    });
    s.once("error", (e: NodeJS.ErrnoException) => {
      s.destroy();
      resolve(e.code ?? e.message);
    });
    s.connect(socketPath);
  });
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
      this.#tok = checkedToken(await readTokenFile(this.file), `token file ${this.file}`);
      this.stamp = stamp;
    }
    return this.#tok;
  }
  invalidate() { return false; }
}

/** What a token file may hold: a token is under a hundred bytes (maxTokenFile in Go). */
const MAX_TOKEN_FILE = 4096;

const openAsync = promisify(openFd);
const readAsync = promisify(readFd);
const fstatAsync = promisify(fstatFd);
const closeAsync = promisify(closeFd);

/**
 * Reads a token file, at most MAX_TOKEN_FILE bytes of it: a larger file (a log named by mistake, a
 * device) is refused, not read whole and sent as the token. Errors never quote the contents.
 *
 * The open is non-blocking (O_NONBLOCK), as in the Go and Python clients: a FIFO nobody writes to
 * is opened without waiting for a writer and reads as empty at once, where a blocking open would
 * hang every call (and a thread of libuv's pool) until a writer came. A pipe with a writer (a
 * shell's `<(pass show …)`) is still read to its end: Node cannot make the descriptor blocking
 * again, so a pipe is read through a net.Socket, which waits for data on the event loop.
 */
async function readTokenFile(file: string): Promise<string> {
  const fd = await openAsync(file, fsConstants.O_RDONLY | (fsConstants.O_NONBLOCK ?? 0));
  let buf: Buffer;
  try {
    buf = await readBounded(fd, MAX_TOKEN_FILE + 1);
  } catch (e) {
    // Node's read errors (EISDIR, EAGAIN) do not name the file.
    throw new Error(`token file ${file}: ${e instanceof Error ? e.message : String(e)}`);
  }
  if (buf.length > MAX_TOKEN_FILE) {
    buf.fill(0);
    throw new Error(`token file ${file} is larger than ${MAX_TOKEN_FILE} bytes; it should hold only the token: ` +
      `is it the right file?`);
  }
  const text = buf.toString("utf8");
  buf.fill(0);
  return text;
}

/** Reads fd (opened O_NONBLOCK) to its end, but no more than limit bytes, and closes it. */
async function readBounded(fd: number, limit: number): Promise<Buffer> {
  const buf = Buffer.alloc(limit);
  let n = 0;
  let handedOver = false;
  try {
    while (n < limit) {
      let got: number;
      try {
        got = (await readAsync(fd, buf, n, limit - n, null)).bytesRead;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EAGAIN" || !(await fstatAsync(fd)).isFIFO()) throw e;
        // A pipe whose writer has not written yet: wait for the rest on the event loop.
        handedOver = true;
        return await readPipe(fd, buf.subarray(0, n), limit);
      }
      if (got === 0) break; // the end; at once for a FIFO nobody writes to
      n += got;
    }
  } finally {
    if (!handedOver) await closeAsync(fd);
  }
  return buf.subarray(0, n);
}

/** Reads the rest of a pipe after head, to its end or limit bytes, through a net.Socket, which
 * waits for the writer on the event loop, and closes fd. A read(2) comes first (readBounded):
 * Linux does not wake a poll on a FIFO that has had no writer yet, where read(2) says its end. */
function readPipe(fd: number, head: Buffer, limit: number): Promise<Buffer> {
  return new Promise<Buffer>((resolve, reject) => {
    const sock = new Socket({ fd, readable: true, writable: false }); // owns fd: destroy closes it
    const chunks: Buffer[] = [head];
    let n = head.length;
    let settled = false;
    const done = () => {
      if (settled) return;
      settled = true;
      sock.destroy();
      const all = Buffer.concat(chunks);
      for (const c of chunks) c.fill(0);
      resolve(all.subarray(0, limit));
    };
    sock.on("data", (c: Buffer) => {
      chunks.push(c);
      n += c.length;
      if (n >= limit) done();
    });
    sock.on("end", done);
    sock.on("error", (e) => {
      sock.destroy();
      reject(e);
    });
  });
}

// Renewal of attested tokens (as in the Go client's tokensource.go).
/** A fetched token with less life than this left when it arrives counts as a failed fetch: it could
 * be neither used nor renewed sensibly, and taking it would fetch again at once, in a loop that
 * spends the uid's FetchToken rate (minTokenLife in Go). */
const MIN_TOKEN_LIFE_MS = 100;
/** Bounds of the backoff between failed renewals while the current token still serves. */
const RETRY_MIN_MS = 200;
const RETRY_MAX_MS = 30_000;

/** Refuses a token FetchToken returned that cannot serve: empty, or expiring within
 * MIN_TOKEN_LIFE_MS of now (a registration's ttl too short), or without an expiry (expires 0). */
function checkFetched(tok: string, expires: number, now: number): BrokerError | undefined {
  if (!tok) {
    return new BrokerError(grpcStatus.INTERNAL, "brokerd answered FetchToken without a token; " +
      "check that brokerd and this client are of the same release");
  }
  if (!(expires > 0)) {
    // Not a short ttl: no expiry at all (the field missing), which a brokerd of this release never sends.
    return new BrokerError(grpcStatus.FAILED_PRECONDITION, "brokerd issued a token without an expiry; it cannot be " +
      "renewed. Not a short registration --ttl: check that brokerd and this client are of the same release");
  }
  const left = expires - now;
  if (left < MIN_TOKEN_LIFE_MS) {
    const life = left > 0 ? `${Math.round(left)}ms left to live` : "already expired";
    return new BrokerError(grpcStatus.FAILED_PRECONDITION, `brokerd issued a token that had ${life} when it ` +
      `arrived (expiry ${new Date(expires).toISOString()}); it cannot be used or renewed. The workload registration's ` +
      "ttl is too short: ask the operator to register this program again with a longer one " +
      "(`brokerctl workload add NAME ... --ttl 1h`)");
  }
  return undefined;
}

/**
 * Tokens fetched by attestation, renewed on the first call after two thirds of their lifetime; a
 * token within 2 s (or a sixth of its lifetime) of expiry is never used. Concurrent calls share one
 * fetch. A fetched token that is empty or arrives (almost) expired is a failed fetch
 * (checkFetched), never handed out. A failed renewal keeps the current token serving while it
 * is usable, and the next renewal waits, backing off from 200 ms to 30 s, instead of every call
 * fetching again.
 *
 * Exported for cmd/brokerd's tests (test/attested.ts, with a fake clock); not part of the
 * client's API: BrokerClient chooses its token source.
 */
export class AttestedToken implements TokenSource {
  #tok = ""; // an ES private field: util.inspect/console.log never show the token
  private issued = 0;
  private expires = 0;
  private inflight: Promise<string> | undefined;
  /** After a failed renewal: no new one before this time (ms), while the current token serves. */
  private retryAt = 0;
  private retryMs = RETRY_MIN_MS;

  constructor(private readonly fetch: () => Promise<[string, number]>, private readonly now: () => number = Date.now) {}

  /** Whether the current token may be handed out at now. */
  private usable(now: number): boolean {
    return this.#tok !== "" && now + Math.min(2000, (this.expires - this.issued) / 6) < this.expires;
  }

  token(): Promise<string> {
    const now = this.now();
    if (this.#tok && now < this.issued + ((this.expires - this.issued) * 2) / 3) return Promise.resolve(this.#tok);
    if (now < this.retryAt && this.usable(now)) return Promise.resolve(this.#tok);
    this.inflight ??= this.fetch().then(([tok, expires]) => {
      const now = this.now();
      const refused = checkFetched(tok, expires, now);
      if (refused) throw refused;
      this.#tok = tok;
      this.issued = now;
      this.expires = expires;
      this.retryAt = 0;
      this.retryMs = RETRY_MIN_MS;
      return tok;
    }).catch((err) => {
      // Renewal failed: the current token may still serve until it nears its expiry.
      const now = this.now();
      if (!this.usable(now)) throw err;
      this.retryAt = now + this.retryMs;
      this.retryMs = Math.min(this.retryMs * 2, RETRY_MAX_MS);
      return this.#tok;
    }).finally(() => { this.inflight = undefined; });
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
