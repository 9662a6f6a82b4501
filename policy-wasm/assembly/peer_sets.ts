// Groups the peer identities of one subject endpoint and direction by the set of entries that
// select them, for map-state computation (mapstate.ts): full resolution at 100k identities must
// not allocate per identity. No I/O.
//
//  1. Entries are added in ascending order, so a set is a path in a trie of sets: set 0 is the
//     empty set, and adding entry e to set s gives the child (s, e), created once. Identities
//     selected by the same entries end in the same set, whose partition is computed once.
//  2. Per identity slot, the set it is in lives in a scratch array the size of the identity
//     table, and a bit per slot says which slots are in use; both are reset by takeSlots(), so
//     the scratch is reused by every call without clearing it whole.
//  3. takeSlots() lists the marked slots in slot order by scanning the bits; when identity ids do
//     not ascend with slots (a freed slot was reused), the list is sorted by id.

import { identities } from "./model";

let slotSet = new StaticArray<i32>(0);
let slotMark = new StaticArray<u32>(0);

/** The trie of entry sets (1.) and the slots marked in the scratch (2.). */
export class PeerSets {
  parent: Array<i32> = [-1];
  last: Array<i32> = [-1];
  children: Map<u64, i32> = new Map<u64, i32>();
  /** The last step taken (a run of slots in one set usually gets the same entry next). */
  private stepFrom: i32 = -1;
  private stepEntry: i32 = -1;
  private stepTo: i32 = 0;

  constructor() {
    const n = identities.length;
    if (slotSet.length < n) {
      slotSet = new StaticArray<i32>(n + (n >> 3));
      slotMark = new StaticArray<u32>((slotSet.length + 31) >> 5);
    }
  }

  get count(): i32 {
    return this.parent.length;
  }

  /** Puts `slot` in the set (with the empty set of entries when it was not yet in use). */
  mark(slot: i32): void {
    const w = slot >> 5;
    const bit: u32 = 1 << (slot & 31);
    const word = unchecked(slotMark[w]);
    if ((word & bit) != 0) return;
    unchecked(slotMark[w] = word | bit);
    unchecked(slotSet[slot] = 0);
  }

  /** Adds entry `ei` (not lower than any entry added before) to the set of `slot`. */
  add(slot: i32, ei: i32): void {
    this.mark(slot);
    const cur = unchecked(slotSet[slot]);
    if (unchecked(this.last[cur]) == ei) return;
    unchecked(slotSet[slot] = this.step(cur, ei));
  }

  private step(cur: i32, ei: i32): i32 {
    if (cur == this.stepFrom && ei == this.stepEntry) return this.stepTo;
    const key = (<u64> cur << 32) | <u64> <u32> ei;
    let next: i32;
    if (this.children.has(key)) next = this.children.get(key);
    else {
      next = this.parent.length;
      this.parent.push(cur);
      this.last.push(ei);
      this.children.set(key, next);
    }
    this.stepFrom = cur;
    this.stepEntry = ei;
    this.stepTo = next;
    return next;
  }

  /** The set of a marked slot. */
  setOf(slot: i32): i32 {
    return unchecked(slotSet[slot]);
  }

  /** The entries of set `s`, ascending, appended to `out`. */
  entriesOf(s: i32, out: Array<i32>): void {
    const start = out.length;
    for (let at = s; at > 0; at = unchecked(this.parent[at])) out.push(unchecked(this.last[at]));
    for (let i = start, j = out.length - 1; i < j; i++, j--) {
      const t = unchecked(out[i]);
      unchecked(out[i] = out[j]);
      unchecked(out[j] = t);
    }
  }

  /** The marked slots ordered by identity id (3.); clears the marks. */
  takeSlots(): Array<i32> {
    const out = new Array<i32>();
    const words = (identities.length + 31) >> 5;
    for (let w = 0; w < words; w++) {
      let word = unchecked(slotMark[w]);
      if (word == 0) continue;
      unchecked(slotMark[w] = 0);
      while (word != 0) {
        out.push((w << 5) + <i32> ctz<u32>(word));
        word &= word - 1;
      }
    }
    let ascending = true;
    for (let i = 1; i < out.length && ascending; i++) {
      ascending = unchecked(identities[out[i - 1]]).id < unchecked(identities[out[i]]).id;
    }
    if (!ascending) {
      out.sort((a, b) => {
        const x = identities[a].id;
        const y = identities[b].id;
        return x < y ? -1 : x > y ? 1 : 0;
      });
    }
    return out;
  }
}
