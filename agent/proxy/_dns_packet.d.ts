// The part of npm `dns-packet` (5.x) that dns_message.ts uses. Local, because @types/dns-packet
// pulls Node's global timer types into the whole program.
import type { Buffer } from "node:buffer";

export interface Question {
  name: string;
  type: string;
  class?: string;
}
export function decode(b: Buffer): unknown;
export function encode(
  p: { type: string; id: number; flags: number; questions: Question[] },
): Buffer;
export const RECURSION_DESIRED: number;
export const RECURSION_AVAILABLE: number;
