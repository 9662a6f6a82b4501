// The part of npm `dns-packet`'s types.js that dns_message.ts uses (the record type names).
export function toString(type: number): string;
