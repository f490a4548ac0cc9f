from twisted.application.service import ServiceMaker

intermediary = ServiceMaker("SixChat intermediary", "intermediary.tap", "SixChat intermediary: store and forward, prekeys, relay (TCP 4605)", "intermediary")
