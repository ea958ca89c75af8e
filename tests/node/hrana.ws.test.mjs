// Port of libsql/hrana-client-ts src/__tests__/client.test.ts over "ws", asking for Hrana 3
// (see hrana.suite.mjs for the port itself).
import { defineHranaSuite } from "./hrana.suite.mjs";

defineHranaSuite("ws");
