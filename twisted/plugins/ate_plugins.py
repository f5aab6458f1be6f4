from twisted.application.service import ServiceMaker

ateMaster = ServiceMaker("ATE master", "ate.tap", "Test cell controller (ate-master)", "ate-master")
ateHandler = ServiceMaker("ATE handler", "ate.handler.tap",
                          "Handler application driving one or more masters", "ate-handler")
ateSimSites = ServiceMaker("ATE simulated sites", "ate.sim.tap",
                           "Simulated Control apps and TestApps", "ate-sim-sites")
ateDemo = ServiceMaker("ATE demo", "ate.demo", "A whole test cell in one process", "ate-demo")
ateSimHandler = ServiceMaker("ATE simulated handler device", "ate.sim.handler_tap",
                             "A simulated handler device on the line protocol (TCP or a pty)",
                             "ate-sim-handler")
