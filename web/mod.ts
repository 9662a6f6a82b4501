// The public entry of cilia's web simulator for servers: the static file handler for the built
// simulator (web/dist/, made by `deno task build:web`), which `deno task web` and the tests
// serve. The agent does not serve it. The simulator itself is web/app/, bundled for the browser.

export { DEFAULT_ROOT, serveSimulator, type ServeSimulatorOptions } from "./static.ts";
export { EXAMPLES, FOOTGUNS, type Tutorial, TUTORIALS } from "./tutorials.ts";
