// Protocol tables: Kafka API keys and roles, ICMP type names, protocol names. Facts from Kafka's
// protocol guide and Cilium's api package. This module is browser compatible.

export const KAFKA_API_KEYS: Readonly<Record<string, number>> = {
  produce: 0,
  fetch: 1,
  offsets: 2,
  metadata: 3,
  leaderandisr: 4,
  stopreplica: 5,
  updatemetadata: 6,
  controlledshutdown: 7,
  offsetcommit: 8,
  offsetfetch: 9,
  findcoordinator: 10,
  joingroup: 11,
  heartbeat: 12,
  leavegroup: 13,
  syncgroup: 14,
  describegroups: 15,
  listgroups: 16,
  saslhandshake: 17,
  apiversions: 18,
  createtopics: 19,
  deletetopics: 20,
  deleterecords: 21,
  initproducerid: 22,
  offsetforleaderepoch: 23,
  addpartitionstotxn: 24,
  addoffsetstotxn: 25,
  endtxn: 26,
  writetxnmarkers: 27,
  txnoffsetcommit: 28,
  describeacls: 29,
  createacls: 30,
  deleteacls: 31,
  describeconfigs: 32,
  alterconfigs: 33,
};

export function kafkaApiKeyName(key: number): string {
  return Object.entries(KAFKA_API_KEYS).find(([, v]) => v === key)?.[0] ?? `apikey-${key}`;
}

/** Cilium's role expansion (pkg/policy/api/kafka.go). */
export const KAFKA_ROLES: Readonly<Record<"produce" | "consume", readonly number[]>> = {
  produce: [0, 3, 18],
  consume: [1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 18],
};

export const ICMPV4_TYPES: Readonly<Record<string, number>> = {
  EchoReply: 0,
  DestinationUnreachable: 3,
  Redirect: 5,
  Echo: 8,
  EchoRequest: 8,
  RouterAdvertisement: 9,
  RouterSelection: 10,
  TimeExceeded: 11,
  ParameterProblem: 12,
  Timestamp: 13,
  TimestampReply: 14,
  Photuris: 40,
  ExtendedEchoRequest: 42,
  ExtendedEchoReply: 43,
};

export const ICMPV6_TYPES: Readonly<Record<string, number>> = {
  DestinationUnreachable: 1,
  PacketTooBig: 2,
  TimeExceeded: 3,
  ParameterProblem: 4,
  EchoRequest: 128,
  EchoReply: 129,
  MulticastListenerQuery: 130,
  MulticastListenerReport: 131,
  MulticastListenerDone: 132,
  RouterSolicitation: 133,
  RouterAdvertisement: 134,
  NeighborSolicitation: 135,
  NeighborAdvertisement: 136,
  RedirectMessage: 137,
  RouterRenumbering: 138,
  ICMPNodeInformationQuery: 139,
  ICMPNodeInformationResponse: 140,
  InverseNeighborDiscoverySolicitation: 141,
  InverseNeighborDiscoveryAdvertisement: 142,
  HomeAgentAddressDiscoveryRequest: 144,
  HomeAgentAddressDiscoveryReply: 145,
  MobilePrefixSolicitation: 146,
  MobilePrefixAdvertisement: 147,
  DuplicateAddressRequestCodeSuffix: 157,
  DuplicateAddressConfirmationCodeSuffix: 158,
  ExtendedEchoRequest: 160,
  ExtendedEchoReply: 161,
};

export const PROTOCOL_NUMBERS: Readonly<Record<string, number>> = {
  ANY: 0,
  ICMP: 1,
  TCP: 6,
  UDP: 17,
  ICMPV6: 58,
  SCTP: 132,
};

export function protocolName(n: number): string {
  return Object.entries(PROTOCOL_NUMBERS).find(([, v]) => v === n)?.[0] ?? `proto-${n}`;
}

/** How a flow's protocol and port are written: `TCP/80`, `ICMP/type 8`, `ICMPV6/type 128`. */
export function protoPortText(proto: number, port: number): string {
  const icmp = proto === PROTOCOL_NUMBERS.ICMP || proto === PROTOCOL_NUMBERS.ICMPV6;
  return `${protocolName(proto)}/${icmp ? `type ${port}` : port}`;
}

/** IANA service-name syntax of named ports: a letter somewhere, no "--", at most 15 characters. */
export const PORT_NAME = /^(?=.*[a-zA-Z])(?!.*--)[a-zA-Z0-9]([-a-zA-Z0-9]{0,13}[a-zA-Z0-9])?$/;
