// Kafka L7 matching (POLICY-SEMANTICS §9.2). A rule matches when the API key is in its key set,
// and version and client id are equal where given. Topics: only Produce, Fetch, ListOffsets,
// Metadata, OffsetCommit and OffsetFetch carry decoded topics; every topic of such a request must
// be covered by some matching rule. Requests without topics ignore the topic constraint, except
// the topic-bearing kinds cilia does not decode (CreateTopics, DeleteTopics, …), which a
// topic-restricted rule never admits. Denied requests get error 29 (TOPIC_AUTHORIZATION_FAILED).

import { entries, KafkaRule } from "./model";
import { L7_ALLOWED, L7_DENIED, L7Result } from "./l7";
import { Reader } from "./wire";

export const KAFKA_TOPIC_AUTHORIZATION_FAILED: i32 = 29;

export class KafkaRequest {
  apiKey: i32 = 0;
  apiVersion: i32 = 0;
  clientID: string = "";
  topics: Array<string> = new Array<string>();
}

export function readKafkaRequest(r: Reader): KafkaRequest {
  const q = new KafkaRequest();
  q.apiKey = r.i32();
  q.apiVersion = r.i32();
  q.clientID = r.strOrEmpty();
  const n = r.count(4);
  for (let i = 0; i < n; i++) q.topics.push(r.strOrEmpty());
  return q;
}

function decodesTopics(key: i32): bool {
  return key == 0 || key == 1 || key == 2 || key == 3 || key == 8 || key == 9;
}

/**
 * Topic-bearing request kinds whose topics cilia does not decode (Cilium's isTopicAPIKey minus
 * the decoded ones): CreateTopics, DeleteTopics, DeleteRecords, OffsetForLeaderEpoch,
 * AddPartitionsToTxn, WriteTxnMarkers, TxnOffsetCommit, AlterReplicaLogDirs, DescribeLogDirs,
 * CreatePartitions. A topic-restricted rule never admits them.
 */
function undecodedTopics(key: i32): bool {
  return key == 19 || key == 20 || key == 21 || key == 23 || key == 24 || key == 27 ||
    key == 28 || key == 34 || key == 35 || key == 37;
}

function baseMatches(rule: KafkaRule, req: KafkaRequest): bool {
  if (rule.apiKeys.length > 0 && !rule.apiKeys.includes(req.apiKey)) return false;
  if (rule.apiVersion >= 0 && rule.apiVersion != req.apiVersion) return false;
  const cid = rule.clientID;
  if (cid !== null && cid != req.clientID) return false;
  return true;
}

export function kafkaCheck(req: KafkaRequest, l7: Array<i32>): L7Result {
  const res = new L7Result();
  const remaining = new Array<string>();
  if (decodesTopics(req.apiKey)) {
    for (let i = 0; i < req.topics.length; i++) {
      if (!remaining.includes(req.topics[i])) remaining.push(req.topics[i]);
    }
  }
  const needTopics = remaining.length > 0;
  for (let i = 0; i < l7.length; i++) {
    const rs = entries[l7[i]].kafka;
    for (let k = 0; k < rs.length; k++) {
      const rule = rs[k];
      if (!baseMatches(rule, req)) continue;
      const topic = rule.topic;
      if (topic === null || (!decodesTopics(req.apiKey) && !undecodedTopics(req.apiKey))) {
        res.status = L7_ALLOWED;
        res.entry = l7[i];
        res.rule = k;
        return res;
      }
      if (!needTopics) continue;
      const at = remaining.indexOf(topic);
      if (at >= 0) remaining.splice(at, 1);
      if (remaining.length == 0) {
        res.status = L7_ALLOWED;
        res.entry = l7[i];
        res.rule = k;
        return res;
      }
    }
  }
  res.status = L7_DENIED;
  res.detail = KAFKA_TOPIC_AUTHORIZATION_FAILED;
  return res;
}
