// An MCP server with one tool, `search`, answered by brokerd: it holds no Scavio key, and no token
// either when an operator registered it (`brokerctl workload add`); else set CREDBROKER_TOKEN.
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { StdioServerTransport } from "@modelcontextprotocol/sdk/server/stdio.js";
import { z } from "zod";
import { BrokerClient, BrokerError } from "../src/index.js";

const broker = new BrokerClient(); // CREDBROKER_SOCKET or the default socket
const server = new McpServer({ name: "credbroker-search", version: "0.1.0" });

server.registerTool("search", {
  description: "Search the web (Scavio, through credbroker)",
  inputSchema: { query: z.string().min(1).max(500), numResults: z.number().int().min(1).max(20).optional() },
}, async ({ query, numResults }) => {
  try {
    const resp = await broker.search(query, { numResults });
    return {
      content: [{ type: "text", text: resp.results.map((r) => `${r.position}. ${r.title}\n${r.url}\n${r.snippet}`).join("\n\n") }],
      structuredContent: { results: resp.results.map((r) => r.raw) },
    };
  } catch (e) {
    if (!(e instanceof BrokerError)) throw e;
    // The reason is stable and machine-readable: an agent can tell waiting from asking an operator.
    const wait = e.retryDelayMs ? ` Retry after ${Math.ceil(e.retryDelayMs / 1000)}s.` : "";
    return { isError: true, content: [{ type: "text", text: `${e.reason || e.codeName}: ${e.message}${wait}` }] };
  }
});

await server.connect(new StdioServerTransport());
