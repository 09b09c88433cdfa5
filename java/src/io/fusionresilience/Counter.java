package io.fusionresilience;

import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * An example {@link ResilientState}: a counter.
 *
 * <p>Calls through {@link #apply(String, byte[])}: {@code add(n)} adds {@code n} and returns the
 * new total, {@code get()} returns the total. The snapshot is the MessagePack map {@code
 * {"total": n}}. A sum past the 64-bit range throws {@link ArithmeticException} and changes
 * nothing (deterministically: a replay throws the same way).
 */
public final class Counter implements ResilientState {

  private static final String TOTAL = "total";

  private long total;

  /** A counter at zero. */
  public Counter() {}

  /** Adds {@code n} (may be negative); returns the new total. */
  public long add(long n) {
    total = Math.addExact(total, n);
    return total;
  }

  /** The current total. */
  public long get() {
    return total;
  }

  @Override
  public byte[] apply(String method, byte[] args) {
    List<Object> a = Msg.unpackArgs(args);
    switch (method) {
      case "add":
        expectArity(method, a, 1);
        return Msg.pack(add(Msg.toLong(a.get(0), "add(n): n")));
      case "get":
        expectArity(method, a, 0);
        return Msg.pack(get());
      default:
        throw new IllegalArgumentException(
            "Counter has no method '" + method + "' (it has: add, get)");
    }
  }

  @Override
  public byte[] snapshot() {
    return Msg.packLongMap(Map.of(TOTAL, total));
  }

  @Override
  public void restore(byte[] state) {
    Map<String, Long> doc = Msg.unpackLongMap(state);
    if (!doc.keySet().equals(Set.of(TOTAL))) {
      throw new IllegalArgumentException(
          "a Counter snapshot is {\"total\": int}, got keys " + doc.keySet());
    }
    total = doc.get(TOTAL);
  }

  private static void expectArity(String method, List<Object> args, int n) {
    if (args.size() != n) {
      throw new IllegalArgumentException(
          "Counter." + method + " takes " + n + " argument(s), got " + args.size());
    }
  }
}
