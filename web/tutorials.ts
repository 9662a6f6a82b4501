// The simulator's tutorials, as data: the product's three examples (HTTP GET /public only, Kafka
// produce/consume on one topic, a required X-Token header) and the usual footguns (OR-split rules,
// empty selectors, forgetting DNS). Each is a full scenario in the `cilia policy test` format with
// expectations that hold (tests/web/tutorials_test.ts), and its explanation is the scenario's
// description. This module is browser compatible.

import { httpGetPublic, kafkaTopics, tokenHeader } from "./tutorials/examples.ts";
import { emptySelectors, forgottenDns, orSplit } from "./tutorials/footguns.ts";
import type { Tutorial } from "./tutorials/_tutorial.ts";

export type { Tutorial };

/** The product's three examples. */
export const EXAMPLES: readonly Tutorial[] = [httpGetPublic, kafkaTopics, tokenHeader];

/** The usual mistakes, each next to its fix. */
export const FOOTGUNS: readonly Tutorial[] = [orSplit, emptySelectors, forgottenDns];

/** Every tutorial, in the order the selector lists them. */
export const TUTORIALS: readonly Tutorial[] = [...EXAMPLES, ...FOOTGUNS];
