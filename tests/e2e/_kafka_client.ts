// A test fixture: a kafkajs (npm) producer or consumer, run in a pod by l7_kafka_test.ts.
// `produce <broker> <topic,topic…> <message>` sends the message to each topic in turn with one
// producer (results per topic, with kafkajs's error type such as TOPIC_AUTHORIZATION_FAILED);
// `consume <broker> <topic> <count>` reads that many messages from the beginning with a consumer
// group. Prints one JSON line: `{ok, ...}` or `{ok: false, type, message}`.
import { Kafka, logLevel } from "kafkajs";

const [mode, broker, topic, arg] = Deno.args;
const kafka = new Kafka({
  clientId: "cilia-e2e",
  brokers: [broker!],
  logLevel: logLevel.NOTHING,
  retry: { retries: 0 },
  connectionTimeout: 3000,
  requestTimeout: 5000,
});
const fail = (err: unknown) => {
  const e = err as { type?: string; name?: string; message?: string; cause?: { type?: string } };
  console.log(JSON.stringify({
    ok: false,
    type: e.type ?? e.cause?.type ?? e.name,
    message: e.message,
  }));
};
const timeout = setTimeout(() => {
  fail({ name: "Timeout", message: "no result within 15 s" });
  Deno.exit(0);
}, 15_000);
try {
  if (mode === "produce") { // one producer, each topic in turn: a denial leaves it usable
    const p = kafka.producer({ allowAutoTopicCreation: true });
    await p.connect();
    const results: Record<string, unknown> = {};
    try {
      for (const t of topic!.split(",")) {
        try {
          const r = await p.send({ topic: t, messages: [{ value: arg! }], acks: -1 });
          results[t] = { ok: true, offset: r[0]?.baseOffset };
        } catch (err) {
          const e = err as { type?: string; name?: string; cause?: { type?: string } };
          results[t] = { ok: false, type: e.type ?? e.cause?.type ?? e.name };
        }
      }
      console.log(JSON.stringify({ ok: true, results }));
    } finally {
      await p.disconnect();
    }
  } else {
    const want = Number(arg);
    const c = kafka.consumer({ groupId: `g-${topic}`, maxWaitTimeInMs: 200 });
    await c.connect();
    const got: string[] = [];
    try {
      await c.subscribe({ topic: topic!, fromBeginning: true });
      await new Promise<void>((resolve, reject) => {
        c.on(c.events.CRASH, (e) => reject(e.payload.error));
        c.run({
          eachMessage: ({ message }) => {
            got.push(message.value?.toString() ?? "");
            if (got.length >= want) resolve();
            return Promise.resolve();
          },
        }).catch(reject);
      });
      console.log(JSON.stringify({ ok: true, messages: got }));
    } finally {
      await c.disconnect();
    }
  }
} catch (err) {
  fail(err);
}
clearTimeout(timeout);
