// Test infrastructure only: starts mongo-java-server (an in-memory MongoDB wire-protocol
// server) for taskq's test suite and local demo. Usage:
//   java -cp 'lib/*' MongoTestServer.java [port]
import de.bwaldvogel.mongo.MongoServer;
import de.bwaldvogel.mongo.MongoVersion;
import de.bwaldvogel.mongo.backend.memory.MemoryBackend;
import java.util.List;

public class MongoTestServer {
    // mongo-java-server's newest built-in version reports wire version 8 (MongoDB 4.2);
    // the Rust driver requires 9 (MongoDB 4.4). Every command taskq sends exists in 4.2,
    // so the server announces 4.4.
    static final MongoVersion ANNOUNCED = new MongoVersion() {
        public List<Integer> getVersionArray() { return List.of(4, 4, 0); }
        public int getWireVersion() { return 9; }
    };

    public static void main(String[] args) throws Exception {
        int port = args.length > 0 ? Integer.parseInt(args[0]) : 27017;
        MongoServer server = new MongoServer(new MemoryBackend().version(ANNOUNCED));
        server.bind("127.0.0.1", port);
        System.out.println("mongo-java-server listening on 127.0.0.1:" + port);
        Runtime.getRuntime().addShutdownHook(new Thread(server::shutdownNow));
        Thread.currentThread().join();
    }
}
