package io.fusionresilience;

import java.io.IOException;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.Base64;
import java.util.Iterator;
import java.util.List;
import java.util.Map;

/**
 * Reads the snapshot of a {@code java_actor} from the checkpoint store, without any Python.
 *
 * <p>A {@code java_actor}'s snapshot chunk is written by its Python twin in MessagePack, behind
 * the marker byte 0xC1: {@code {"format": 1, "seq": n, "state": {"class": name, "msgpack":
 * bytes}, "results": [[call_id, seq, "ok"|"err", value], ...]}}, where {@code bytes} is what the
 * class's own {@link ResilientState#snapshot()} returned.
 *
 * <pre>
 *   java -cp build/java/fusion-resilience.jar:ray_dist.jar io.fusionresilience.Inspect \
 *       [--restore] CHUNK_FILE
 * </pre>
 *
 * <p>Prints one JSON object: class, seq, the number of recorded results and the state decoded
 * from its MessagePack. With {@code --restore} it also creates the class, restores it from the
 * state and snapshots it again: {@code "restored": true} when the bytes round-trip. Exit code 0,
 * or 2 with a one-line reason on stderr for a file that is not such a snapshot.
 */
public final class Inspect {

  private static final byte MARKER = (byte) 0xC1;

  private Inspect() {}

  /** Entry point; see the class comment. */
  public static void main(String[] args) {
    boolean restore = args.length == 2 && args[0].equals("--restore");
    if (args.length != (restore ? 2 : 1)) {
      System.err.println("usage: Inspect [--restore] CHUNK_FILE");
      System.exit(2);
    }
    String file = args[args.length - 1];
    try {
      utf8Out().println(inspect(Files.readAllBytes(Path.of(file)), restore));
    } catch (IOException | IllegalArgumentException | ReflectiveOperationException e) {
      System.err.println(file + ": " + e.getMessage());
      System.exit(2);
    }
  }

  /** The JSON report for one snapshot chunk. */
  public static String inspect(byte[] chunk, boolean restore)
      throws ReflectiveOperationException {
    if (chunk.length == 0 || chunk[0] != MARKER) {
      throw new IllegalArgumentException(
          "not a MessagePack actor snapshot (no 0xC1 marker byte; a pickle snapshot?)");
    }
    Map<?, ?> doc = asMap(Msg.unpack(Arrays.copyOfRange(chunk, 1, chunk.length)), "snapshot");
    Map<?, ?> state = asMap(doc.get("state"), "state");
    String cls = Msg.toStr(state.get("class"), "state.class");
    Object bytes = state.get("msgpack");
    if (!(bytes instanceof byte[])) {
      throw new IllegalArgumentException(
          "state.msgpack must be bytes, got " + Msg.typeName(bytes));
    }
    byte[] stateBytes = (byte[]) bytes;
    Object results = doc.get("results");
    if (!(results instanceof List)) {
      throw new IllegalArgumentException("results must be a list, got " + Msg.typeName(results));
    }
    StringBuilder out = new StringBuilder("{\"class\": ");
    json(out, cls);
    out.append(", \"seq\": ").append(Msg.toLong(doc.get("seq"), "seq"));
    out.append(", \"results\": ").append(((List<?>) results).size());
    out.append(", \"state\": ");
    json(out, Msg.unpack(stateBytes));
    if (restore) {
      ResilientState instance =
          (ResilientState) Class.forName(cls).getDeclaredConstructor().newInstance();
      instance.restore(stateBytes);
      out.append(", \"restored\": ").append(Arrays.equals(instance.snapshot(), stateBytes));
    }
    return out.append('}').toString();
  }

  private static Map<?, ?> asMap(Object value, String what) {
    if (!(value instanceof Map)) {
      throw new IllegalArgumentException(what + " must be a map, got " + Msg.typeName(value));
    }
    return (Map<?, ?>) value;
  }

  /** Appends {@code value} (a {@link Msg#unpack} result) as JSON; bytes as base64 strings. */
  static void json(StringBuilder out, Object value) {
    if (value == null) {
      out.append("null");
    } else if (value instanceof String) {
      out.append('"');
      for (char c : ((String) value).toCharArray()) {
        if (c == '"' || c == '\\') {
          out.append('\\').append(c);
        } else if (c < 0x20) {
          out.append(String.format("\\u%04x", (int) c));
        } else {
          out.append(c);
        }
      }
      out.append('"');
    } else if (value instanceof byte[]) {
      json(out, Base64.getEncoder().encodeToString((byte[]) value));
    } else if (value instanceof Map) {
      out.append('{');
      Iterator<? extends Map.Entry<?, ?>> it = ((Map<?, ?>) value).entrySet().iterator();
      while (it.hasNext()) {
        Map.Entry<?, ?> e = it.next();
        json(out, String.valueOf(e.getKey()));
        out.append(": ");
        json(out, e.getValue());
        if (it.hasNext()) {
          out.append(", ");
        }
      }
      out.append('}');
    } else if (value instanceof List) {
      out.append('[');
      Iterator<?> it = ((List<?>) value).iterator();
      while (it.hasNext()) {
        json(out, it.next());
        if (it.hasNext()) {
          out.append(", ");
        }
      }
      out.append(']');
    } else {
      out.append(value); // Long, BigInteger, Double, Boolean
    }
  }

  /** For tests: the JSON of one value. */
  static String json(Object value) {
    StringBuilder out = new StringBuilder();
    json(out, value);
    return out.toString();
  }

  private static PrintStream utf8Out() {
    return new PrintStream(System.out, true, StandardCharsets.UTF_8);
  }
}
