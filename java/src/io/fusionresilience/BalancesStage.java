package io.fusionresilience;

import io.ray.api.Ray;
import java.io.IOException;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import org.msgpack.core.MessageBufferPacker;
import org.msgpack.core.MessagePackException;
import org.msgpack.core.MessageUnpacker;

/**
 * The payments job's balance stage in Java: per-account balances as keyed state.
 *
 * <p>Same semantics as {@code Balances} in {@code resilience/jobs/payments/job.py}: every leg
 * {@code [line_no, tx_id, account, delta, score]} sets {@code balance = old + delta} (accounts
 * start at 0) and produces {@code [line_no, tx_id, account, delta, balance_after, score]}. Routing
 * legs to the task that owns their account (key groups) is the caller's business.
 *
 * <p>Snapshots are incremental, as with Python's {@code KeyedState}: {@link #snapshotDelta()}
 * returns only the accounts changed since the previous call, in the {@code "set"}/{@code "del"}
 * shape of a keyed-state delta chunk, so the Python runtime stores them in the same chain.
 * Restoring takes the folded full state ({@code {account: balance}}).
 *
 * <p>Every method returns a value, even those with nothing to say: in Ray 2.60 a {@code void}
 * Java method called from Python kills the Java worker ("1 return objects expected").
 *
 * <p>Balances past the 64-bit range throw {@link ArithmeticException} (Python would grow a big
 * int that MessagePack cannot carry). A batch that throws, for any reason, changes nothing.
 * Exceptions reach Python as described in {@link ResilientHost}.
 */
public class BalancesStage {

  private Map<String, Long> balances = new HashMap<>();
  private Set<String> dirty = new HashSet<>();

  /** An empty stage (also what Ray's restart of a crashed actor gives). */
  public BalancesStage() {}

  /**
   * Applies a batch of legs and returns the resulting records.
   *
   * @param legs a MessagePack array of {@code [line_no: int, tx_id: str, account: str, delta: int,
   *     score: float]}
   * @return a MessagePack array of {@code [line_no, tx_id, account, delta, balance_after, score]},
   *     one per leg, in order (score as float64)
   * @throws IllegalArgumentException on malformed input (nothing is applied)
   * @throws ArithmeticException when a balance leaves the 64-bit range (nothing is applied)
   */
  public byte[] process(byte[] legs) {
    List<Leg> batch = decodeLegs(legs);
    // Work on an overlay so that a batch failing half-way leaves the state as it was.
    Map<String, Long> updated = new HashMap<>();
    long[] after = new long[batch.size()];
    for (int i = 0; i < after.length; i++) {
      Leg leg = batch.get(i);
      Long old = updated.get(leg.account);
      if (old == null) {
        old = balances.getOrDefault(leg.account, 0L);
      }
      long balance = Math.addExact(old, leg.delta);
      updated.put(leg.account, balance);
      after[i] = balance;
    }
    balances.putAll(updated);
    dirty.addAll(updated.keySet());
    return encodeOutput(batch, after);
  }

  /**
   * Applies a batch given as columns: only what the balances need crosses the language
   * boundary (the Python side keeps ids, line numbers and scores and zips them back).
   *
   * @param columns a MessagePack array {@code [accounts: [str, ...], deltas: [int, ...]]} of
   *     two arrays of the same length
   * @return a MessagePack array of the balance after each leg, in order
   * @throws IllegalArgumentException on malformed input (nothing is applied)
   * @throws ArithmeticException when a balance leaves the 64-bit range (nothing is applied)
   */
  public byte[] processColumns(byte[] columns) {
    String[] accounts;
    long[] deltas;
    try (MessageUnpacker in = Msg.unpacker(columns)) {
      if (in.unpackArrayHeader() != 2) {
        throw new IllegalArgumentException("expected [accounts, deltas]");
      }
      int n = in.unpackArrayHeader();
      accounts = new String[n];
      for (int i = 0; i < n; i++) {
        accounts[i] = in.unpackString();
      }
      if (in.unpackArrayHeader() != n) {
        throw new IllegalArgumentException("accounts and deltas differ in length");
      }
      deltas = new long[n];
      for (int i = 0; i < n; i++) {
        deltas[i] = in.unpackLong();
      }
      if (in.hasNext()) {
        throw new IllegalArgumentException("trailing bytes after the columns");
      }
    } catch (IOException | MessagePackException e) {
      throw new IllegalArgumentException(
          "columns must be a MessagePack [[str, ...], [int, ...]]: " + e.getMessage(), e);
    }
    Map<String, Long> updated = new HashMap<>();
    long[] after = new long[accounts.length];
    for (int i = 0; i < after.length; i++) {
      Long old = updated.get(accounts[i]);
      if (old == null) {
        old = balances.getOrDefault(accounts[i], 0L);
      }
      long balance = Math.addExact(old, deltas[i]);
      updated.put(accounts[i], balance);
      after[i] = balance;
    }
    balances.putAll(updated);
    dirty.addAll(updated.keySet());
    MessageBufferPacker out = Msg.packer();
    try {
      out.packArrayHeader(after.length);
      for (long balance : after) {
        out.packLong(balance);
      }
      out.close();
    } catch (IOException e) {
      throw new IllegalStateException("MessagePack packing failed in memory", e);
    }
    return out.toByteArray();
  }

  /**
   * The accounts changed since the previous call, then forgets them.
   *
   * @return MessagePack {@code {"set": {account: balance, ...}, "del": [], "keys": n}} (keys
   *     sorted; this stage never deletes an account, so "del" is always empty; "keys" is the
   *     number of accounts held)
   */
  public byte[] snapshotDelta() {
    beforeSnapshot();
    Map<String, Long> changed = new TreeMap<>();
    for (String account : dirty) {
      changed.put(account, balances.get(account));
    }
    dirty = new HashSet<>();
    Map<String, Object> doc = new TreeMap<>();
    doc.put("set", changed);
    doc.put("del", List.of());
    doc.put("keys", (long) balances.size());
    return Msg.pack(doc);
  }

  /** The full state as MessagePack {@code {account: balance}} (does not touch the delta). */
  public byte[] snapshot() {
    beforeSnapshot();
    return Msg.packLongMap(balances);
  }

  /**
   * Replaces the state with {@code fullState} and clears the changed-accounts set.
   *
   * @param fullState MessagePack map {@code {account: balance}}
   * @return the number of accounts now held
   * @throws IllegalArgumentException if the bytes are not such a map (the state is unchanged)
   */
  public long restore(byte[] fullState) {
    beforeRestore();
    Map<String, Long> restored = Msg.unpackLongMap(fullState);
    balances = restored;
    dirty = new HashSet<>();
    return balances.size();
  }

  /** Number of accounts held. */
  public long size() {
    return balances.size();
  }

  /**
   * Called first by {@link #snapshotDelta()} and {@link #snapshot()}. Does nothing here; a
   * subclass may fail or end the JVM there (the drills in the project's tests do).
   */
  protected void beforeSnapshot() {}

  /** Called first by {@link #restore(byte[])}; does nothing here (see {@link #beforeSnapshot}). */
  protected void beforeRestore() {}

  /** The process id of this actor's JVM. */
  public long pid() {
    return ProcessHandle.current().pid();
  }

  /** Whether Ray restarted this actor after a crash: the state is then empty until restored. */
  public boolean restarted() {
    return Ray.getRuntimeContext().wasCurrentActorRestarted();
  }

  // -- wire format ------------------------------------------------------------------------

  /** One decoded input leg. */
  private static final class Leg {
    final long lineNo;
    final String txId;
    final String account;
    final long delta;
    final double score;

    Leg(long lineNo, String txId, String account, long delta, double score) {
      this.lineNo = lineNo;
      this.txId = txId;
      this.account = account;
      this.delta = delta;
      this.score = score;
    }
  }

  private static List<Leg> decodeLegs(byte[] legs) {
    int i = -1;
    try (MessageUnpacker in = Msg.unpacker(legs)) {
      int n = in.unpackArrayHeader();
      List<Leg> batch = new ArrayList<>(Math.min(n, 65536));
      for (i = 0; i < n; i++) {
        int fields = in.unpackArrayHeader();
        if (fields != 5) {
          throw new IllegalArgumentException(
              "leg " + i + " has " + fields + " fields, expected 5");
        }
        batch.add(
            new Leg(
                in.unpackLong(),
                in.unpackString(),
                in.unpackString(),
                in.unpackLong(),
                Msg.readDouble(in)));
      }
      if (in.hasNext()) {
        throw new IllegalArgumentException("trailing bytes after the array of legs");
      }
      return batch;
    } catch (IOException | MessagePackException e) {
      String where = i < 0 ? "array header" : "leg " + i;
      throw new IllegalArgumentException(
          "legs must be a MessagePack array of [line_no: int, tx_id: str, account: str,"
              + " delta: int, score: float]; bad "
              + where
              + ": "
              + e.getMessage(),
          e);
    }
  }

  private static byte[] encodeOutput(List<Leg> batch, long[] after) {
    MessageBufferPacker out = Msg.packer();
    try {
      out.packArrayHeader(batch.size());
      for (int i = 0; i < after.length; i++) {
        Leg leg = batch.get(i);
        out.packArrayHeader(6);
        out.packLong(leg.lineNo);
        out.packString(leg.txId);
        out.packString(leg.account);
        out.packLong(leg.delta);
        out.packLong(after[i]);
        out.packDouble(leg.score);
      }
      out.close();
    } catch (IOException e) {
      throw new IllegalStateException("MessagePack packing failed in memory", e);
    }
    return out.toByteArray();
  }
}
