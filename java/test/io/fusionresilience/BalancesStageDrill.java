package io.fusionresilience;

/**
 * The balance stage with two failures on demand, for the project's own tests: a restore that
 * throws, and a JVM that calls {@code System.exit} in the middle of a snapshot. Built into a
 * separate jar ({@code build/java/fusion-resilience-tests.jar}) that the product never loads.
 */
public class BalancesStageDrill extends BalancesStage {

  private boolean failNextRestore;
  private int exitInNextSnapshot = -1;

  /** An empty stage. */
  public BalancesStageDrill() {}

  /**
   * When {@code true}, the next {@link #restore(byte[])} throws (once).
   *
   * @return the previous setting
   */
  public boolean failNextRestore(boolean fail) {
    boolean previous = failNextRestore;
    failNextRestore = fail;
    return previous;
  }

  /**
   * The next snapshot calls {@code System.exit(code)} instead of answering: a JVM that ends
   * itself during a checkpoint (a fatal error handler, an operator's script), unlike a SIGKILL.
   *
   * @return {@code code}
   */
  public long exitInNextSnapshot(long code) {
    exitInNextSnapshot = (int) code;
    return code;
  }

  @Override
  protected void beforeSnapshot() {
    if (exitInNextSnapshot >= 0) {
      System.exit(exitInNextSnapshot);
    }
  }

  @Override
  protected void beforeRestore() {
    if (failNextRestore) {
      failNextRestore = false;
      throw new IllegalStateException(
          "BalancesStage.restore refused on purpose: failNextRestore(true) was set");
    }
  }
}
