package io.fusionresilience;

/**
 * What a Java class implements to get the project's exactly-once guarantees.
 *
 * <p>A {@link ResilientHost} actor creates the implementation by name (it must have a public
 * no-argument constructor, which builds the empty initial state) and forwards three kinds of
 * calls to it. The Python runtime wraps them: it gives every call an id, appends it to a
 * write-ahead log before applying it, answers re-sent calls from its results table, takes
 * snapshots, and after a crash restores the newest snapshot and re-applies the logged calls
 * after it. For that to reproduce the state exactly, an implementation must obey the rules
 * below.
 *
 * <h2>State is language-neutral MessagePack</h2>
 *
 * <p>{@link #snapshot()} returns the full state as MessagePack, never Java serialization: a
 * checkpoint can then be read (and checked, migrated, compared) from Python with {@code
 * msgpack.unpackb(data, raw=False)}, and it does not break when the class is recompiled. Use
 * {@link Msg} to build it; maps with String keys are written sorted, so equal states give equal
 * bytes.
 *
 * <h2>Determinism</h2>
 *
 * <p>{@link #apply(String, byte[])} must be a deterministic function of the current state and its
 * arguments: no clock, no randomness that is not seeded from the state, no iteration over
 * unordered collections into the result, no I/O whose outcome can differ on replay. An exception
 * is an outcome too: the same call on the same state must throw the same way, and a call that
 * throws must leave the state unchanged.
 *
 * <h2>Threading</h2>
 *
 * <p>The host calls these methods from one thread at a time (a Ray actor with the default
 * concurrency of one); implementations need no locking.
 */
public interface ResilientState {

  /**
   * The full current state as MessagePack.
   *
   * <p>Must not change the state, and must be restorable: {@code restore(snapshot())} on a fresh
   * instance gives an instance that answers every later call exactly as this one would.
   */
  byte[] snapshot();

  /**
   * Replaces the whole state with one previously returned by {@link #snapshot()}.
   *
   * <p>All or nothing: decode and check everything first, then swap it in, so a failed restore
   * leaves the previous state untouched.
   *
   * @throws IllegalArgumentException (or another unchecked exception) on bytes it cannot decode;
   *     never silently keeps a partial or default state
   */
  void restore(byte[] state);

  /**
   * Applies one call and returns its result.
   *
   * @param method the name of the operation (for example {@code "add"})
   * @param args a MessagePack array of positional arguments ({@link Msg#unpackArgs(byte[])})
   * @return the result as MessagePack (one value, {@link Msg#pack(Object)}; nil for none)
   * @throws IllegalArgumentException for an unknown method or malformed arguments; any exception
   *     must leave the state unchanged
   */
  byte[] apply(String method, byte[] args);
}
