// mongo-java-server (an in-memory MongoDB wire-protocol server) for the local
// `localhost/taskq-local/mongo:test` image. Same server and announced version as
// scripts/mongo-test-server/MongoTestServer.java, but it binds the address it is given
// (0.0.0.0 in a pod) instead of loopback. Usage:
//   java -cp 'lib/*:classes' MongoTestServer [bind-address] [port]
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
        String host = args.length > 0 ? args[0] : "0.0.0.0";
        int port = args.length > 1 ? Integer.parseInt(args[1]) : 27017;
        MongoServer server = new MongoServer(new MemoryBackend().version(ANNOUNCED));
        server.bind(host, port);
        System.out.println("mongo-java-server listening on " + host + ":" + port
                + " (in memory: data does not survive a restart)");
        Runtime.getRuntime().addShutdownHook(new Thread(server::shutdownNow));
        Thread.currentThread().join();
    }
}
