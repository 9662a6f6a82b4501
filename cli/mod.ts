// The cilia CLI as a module (for tests and for embedding): `main(argv)` returns the exit code.

export { HELP, main } from "./main.ts";
