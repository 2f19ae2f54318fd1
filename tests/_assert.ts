/**
 * Typed re-exports of the std assertions (they come from the deno-std npm
 * package, which ships no types).
 *
 * @module
 */

import * as untyped from "@std/assert";

type Assertions = {
  assert(expr: unknown, msg?: string): asserts expr;
  assertEquals<T>(actual: T, expected: T, msg?: string): void;
  assertNotEquals<T>(actual: T, expected: T, msg?: string): void;
  assertStrictEquals<T>(actual: unknown, expected: T, msg?: string): asserts actual is T;
  assertMatch(actual: string, expected: RegExp, msg?: string): void;
  assertStringIncludes(actual: string, expected: string, msg?: string): void;
  assertRejects(fn: () => PromiseLike<unknown>, msg?: string): Promise<unknown>;
  assertThrows(fn: () => unknown, msg?: string): unknown;
  assertGreater<T>(actual: T, expected: T, msg?: string): void;
  assertLess<T>(actual: T, expected: T, msg?: string): void;
  assertExists<T>(actual: T, msg?: string): asserts actual is NonNullable<T>;
};

const typed = untyped as unknown as Assertions;

/** See `@std/assert`. */
export const assert: Assertions["assert"] = typed.assert;
/** See `@std/assert`. */
export const assertEquals: Assertions["assertEquals"] = typed.assertEquals;
/** See `@std/assert`. */
export const assertNotEquals: Assertions["assertNotEquals"] = typed.assertNotEquals;
/** See `@std/assert`. */
export const assertStrictEquals: Assertions["assertStrictEquals"] = typed.assertStrictEquals;
/** See `@std/assert`. */
export const assertMatch: Assertions["assertMatch"] = typed.assertMatch;
/** See `@std/assert`. */
export const assertStringIncludes: Assertions["assertStringIncludes"] = typed.assertStringIncludes;
/** See `@std/assert`. */
export const assertRejects: Assertions["assertRejects"] = typed.assertRejects;
/** See `@std/assert`. */
export const assertThrows: Assertions["assertThrows"] = typed.assertThrows;
/** See `@std/assert`. */
export const assertGreater: Assertions["assertGreater"] = typed.assertGreater;
/** See `@std/assert`. */
export const assertLess: Assertions["assertLess"] = typed.assertLess;
/** See `@std/assert`. */
export const assertExists: Assertions["assertExists"] = typed.assertExists;
