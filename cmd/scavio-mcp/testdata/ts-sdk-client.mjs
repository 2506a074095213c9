// An MCP client built on the official TypeScript SDK: it starts scavio-mcp over stdio with no
// token in its environment, lists the tools, and calls web_search for DURATION_MS milliseconds,
// exiting 1 on the first failed call. Run by TestTypeScriptSDKNoToken (ts_sdk_test.go).
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";

const [sock, bin, durationMs] = process.argv.slice(2);
const transport = new StdioClientTransport({
  command: bin, args: [],
  env: { CREDBROKER_SOCKET: sock, PATH: "/usr/bin:/bin" }, stderr: "inherit",
});
const client = new Client({ name: "ts-sdk-test", version: "0" });
await client.connect(transport);
const tools = await client.listTools();
console.log("tools:", tools.tools.map((t) => t.name).sort().join(","));
let ok = 0;
const start = Date.now();
while (Date.now() - start < Number(durationMs)) {
  const res = await client.callTool({ name: "web_search", arguments: { query: "ts sdk" } });
  if (res.isError) {
    console.log("FAILED:", JSON.stringify(res.content));
    process.exit(1);
  }
  ok++;
  await new Promise((r) => setTimeout(r, 100));
}
console.log("calls ok:", ok);
await client.close();
