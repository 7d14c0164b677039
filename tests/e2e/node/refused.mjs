// One call an agent's Node SDK makes through Airlock, which refuses it: prints one JSON line,
// what the SDK raised (its class, status, message) and how many attempts it made.
// Usage: node refused.mjs SDK PROXY_URL   (NODE_EXTRA_CA_CERTS trusts Airlock's CA)
// Each SDK is given its proxy in code: Node before 22.21 / 24.5 ignores HTTPS_PROXY, and
// stripe-node and the AWS SDK bring their own agents whatever the version (README: Node agents).
import Anthropic from "@anthropic-ai/sdk";
import { DeleteBucketCommand, S3Client } from "@aws-sdk/client-s3";
import { NodeHttpHandler } from "@smithy/node-http-handler";
import { WebClient } from "@slack/web-api";
import { HttpsProxyAgent } from "https-proxy-agent";
import OpenAI from "openai";
import Stripe from "stripe";
import { fetch as undiciFetch, ProxyAgent } from "undici";

const [sdk, proxy] = process.argv.slice(2);
const dispatcher = new ProxyAgent(proxy);
let attempts = 0;
const fetch = (url, init) => {
  attempts += 1;
  return undiciFetch(url, { ...init, dispatcher });
};
const agent = new HttpsProxyAgent(proxy);

const calls = {
  openai: () =>
    new OpenAI({ apiKey: "sk-test", fetch, maxRetries: 2 }).chat.completions.create({
      model: "gpt-blocked",
      messages: [{ role: "user", content: "hi" }],
    }),
  anthropic: () =>
    new Anthropic({ apiKey: "sk-ant-test", fetch, maxRetries: 2 }).messages.create({
      model: "claude-blocked",
      max_tokens: 10,
      messages: [{ role: "user", content: "hi" }],
    }),
  stripe: () => {
    const stripe = new Stripe("sk_test_123", { httpAgent: agent, maxNetworkRetries: 2 });
    stripe.on("request", () => (attempts += 1));
    return stripe.charges.create({ amount: 5_000_000, currency: "usd" });
  },
  slack: () =>
    new WebClient("xoxb-test", { fetch, retryConfig: { retries: 2, minTimeout: 100 } }).chat
      .postMessage({ channel: "C0BLOCKED", text: "hi" }),
  s3: () => {
    const s3 = new S3Client({
      region: "us-east-1",
      credentials: { accessKeyId: "AKIDEXAMPLE", secretAccessKey: "x" },
      requestHandler: new NodeHttpHandler({ httpsAgent: agent }),
      forcePathStyle: true,
      maxAttempts: 3,
    });
    s3.middlewareStack.add((next) => (args) => ((attempts += 1), next(args)), {
      step: "finalizeRequest",
    });
    return s3.send(new DeleteBucketCommand({ Bucket: "agent-bucket" }));
  },
};

try {
  await calls[sdk]();
  console.log(JSON.stringify({ raised: null, attempts }));
} catch (e) {
  const status = e.status ?? e.statusCode ?? e.$metadata?.httpStatusCode ?? null;
  const raised = e.constructor.name;
  console.log(JSON.stringify({ raised, code: e.code ?? null, status, message: String(e.message), attempts }));
}
