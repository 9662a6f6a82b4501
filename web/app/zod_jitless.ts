// Turns off zod's JIT (which builds parsers with `new Function`) before any schema is built, so
// the page runs under its Content-Security-Policy without `unsafe-eval` and without violation
// reports. main.ts imports this module first. This module is browser compatible.

import { z } from "zod";

z.config({ jitless: true });
