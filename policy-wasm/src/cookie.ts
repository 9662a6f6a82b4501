// Rule cookies: a stable 32-bit FNV-1a hash of a policy entry's identity (kind, namespace, name,
// path), carried in map-state and drop events so a packet names the rule that decided it. This
// module is browser compatible.

export function cookieOf(text: string): number {
  let h = 0x811c9dc5;
  const bytes = new TextEncoder().encode(text);
  for (const b of bytes) {
    h ^= b;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h === 0 ? 1 : h;
}
